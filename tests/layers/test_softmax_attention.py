"""The softmax attention layer with PARTIAL rotary against a float64 numpy reference of
docs/MODEL.md §5.2 (transformers cannot check this: it rotates the whole head_dim)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.config import ModelConfig
from m1jax.layers.softmax_attention import SoftmaxAttention
from tests.assertions import assert_close
from tests.helpers import tiny_config


def _config(rotary_dim: int) -> ModelConfig:
  # One softmax layer; hidden_size 24 != H * D = 32, as M != H * D in the release. The
  # tests scale the weights by 10 themselves; on top of the tiny config's init scale (0.1)
  # that makes attention so sharp that float32 rounding exceeds the float32 tolerance
  # against the float64 reference, so keep ModelConfig's default 0.02.
  return tiny_config((1,), hidden_size=24, rotary_dim=rotary_dim, rope_theta=10_000_000.0,
                     initializer_range=0.02)


def _reference(h, params, positions, cfg):
  """Float64 numpy: projections, NeoX rotation of dims [0:rotary_dim], causal GQA softmax."""
  h = h.astype(np.float64)
  wq, wk, wv, wo = (np.asarray(params[n], np.float64)
                    for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
  q = np.einsum("btm,mhd->bthd", h, wq)
  k = np.einsum("btm,mkd->btkd", h, wk)
  v = np.einsum("btm,mkd->btkd", h, wv)
  r = cfg.rotary_dim
  inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, r, 2) / r)
  emb = np.concatenate([positions[..., None] * inv_freq] * 2, axis=-1)[:, :, None, :]

  def rotate(x):
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = np.concatenate([-x_rot[..., r // 2:], x_rot[..., :r // 2]], axis=-1)
    return np.concatenate([x_rot * np.cos(emb) + half * np.sin(emb), x_pass], axis=-1)

  q, k = rotate(q), rotate(k)
  group = cfg.num_attention_heads // cfg.num_key_value_heads
  k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # head j reads kv j//group
  logits = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(cfg.head_dim)
  T = h.shape[1]
  logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhts,bshd->bthd", probs, v)
  return np.einsum("bthd,hdm->btm", out, wo)


@pytest.mark.parametrize("rotary_dim", [4, 8, 2], ids=lambda r: f"rotary{r}-of-8")
def test_partial_rope_attention_matches_formula(rotary_dim):
  cfg = _config(rotary_dim)
  layer = SoftmaxAttention(cfg)
  h = jax.random.normal(jax.random.key(0), (2, 13, 24), jnp.float32)
  # Large, offset positions make the rotation angles matter.
  positions = jnp.broadcast_to(jnp.arange(13, dtype=jnp.int32) * 977 + 50_000, (2, 13))
  params = jax.tree.map(lambda x: x * 10.0,  # sharpen attention so rotation errors show
                        layer.init(jax.random.key(1), h, positions)["params"])
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  out, no_cache = layer.apply({"params": params}, h, positions)
  assert no_cache is None
  expected = _reference(np.asarray(h), params, np.asarray(positions, np.float64), cfg)
  assert_close(out, expected, name=f"attention rotary_dim={rotary_dim}")


def test_partial_and_full_rotary_differ():
  """Guards the test above: the rotary width must actually change the output."""
  h = jax.random.normal(jax.random.key(0), (1, 9, 24), jnp.float32)
  positions = jnp.arange(9, dtype=jnp.int32)[None] * 31
  layer_half, layer_full = SoftmaxAttention(_config(4)), SoftmaxAttention(_config(8))
  params = jax.tree.map(lambda x: x * 10.0, layer_half.init(jax.random.key(1), h, positions))
  a, _ = layer_half.apply(params, h, positions)
  b, _ = layer_full.apply(params, h, positions)
  assert float(jnp.max(jnp.abs(a - b))) > 0.05 * float(jnp.max(jnp.abs(a)))
