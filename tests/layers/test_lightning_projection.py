"""LightningAttention's q/k/v projection has two forms (the weight split for many tokens,
the product split for fewer tokens than hidden_size); both must be the same function."""
import jax
import jax.numpy as jnp
import numpy as np

from m1jax.layers.lightning_attention import LightningAttention
from tests.helpers import tiny_config


def test_few_token_and_many_token_projections_agree():
  cfg = tiny_config((0,), block_size=4)
  M, H = cfg.hidden_size, cfg.num_attention_heads
  T_long = M + 3  # B*T >= M: the weight-slice form; its first 3 tokens alone: product slices
  h = jax.random.normal(jax.random.key(1), (1, T_long, M))
  slope = jnp.linspace(0.05, 2.0, H)
  layer = LightningAttention(cfg)
  params = layer.init(jax.random.key(0), h, slope)

  def loss(p, x):
    y, _ = layer.apply(p, x, slope)
    return jnp.sum(jnp.sin(y)), y

  (_, y_long), _ = jax.value_and_grad(loss, has_aux=True)(params, h)
  # Causal, so the first tokens of the long row are the short row's outputs.
  (_, y_short), g_short = jax.value_and_grad(loss, has_aux=True)(params, h[:, :3])
  np.testing.assert_allclose(y_short, y_long[:, :3], rtol=1e-5, atol=1e-6)
  # The parameter gradients of the long row include its later tokens, so the weight-slice
  # form's gradient is taken of the first 3 outputs only, on the 3 tokens followed by zero
  # tokens (long enough to take that form); causality keeps them out of y[:, :3].
  def loss_first3(p, x):
    y, _ = layer.apply(p, x, slope)
    return jnp.sum(jnp.sin(y[:, :3]))
  padded = jnp.concatenate([h[:, :3], jnp.zeros((1, T_long - 3, M))], axis=1)
  g_padded = jax.grad(loss_first3)(params, padded)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               g_short, g_padded)
