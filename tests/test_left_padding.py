"""The cache-free forward on a LEFT-padded batch (token_mask_BT) scores every row as if it
ran alone: padding stays out of the lightning states, out of the softmax keys, out of the
positions and out of the router statistics. RL scores left-padded rollouts this way.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.config import ModelConfig
from m1jax.inference import generate, left_pad
from m1jax.losses import load_balancing_loss
from m1jax.layers.moe import RouterStats
from m1jax.model import MiniMaxM1ForCausalLM, init_params
from tests.assertions import assert_close
from tests.helpers import tiny_config

# Row lengths: the longest (11) is not a multiple of block_size, and each row has its own
# amount of padding, so padded rows cross lightning blocks at other offsets than alone.
LENGTHS = (11, 6, 9, 1)


def _config(attn_types) -> ModelConfig:
  # Short blocks, so rows cross block boundaries; a small RoPE base, so a position shifted by
  # the padding changes the logits.
  return tiny_config(attn_types, block_size=4, rope_theta=100.0)


@pytest.mark.parametrize("attn_types", [
    pytest.param((0, 0, 1) * 2, id="scanned"),
    pytest.param((0, 1, 0), id="unrolled"),
])
def test_left_padded_rows_score_like_rows_alone(attn_types):
  config = _config(attn_types)
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in LENGTHS]
  ids_BT, mask_BT = left_pad(prompts, pad_id=0)
  # Loud padding: real-looking token ids, which would move every later logit if they leaked.
  ids_BT = jnp.where(mask_BT == 1, ids_BT, jnp.asarray(rng.integers(1, config.vocab_size,
                                                                    ids_BT.shape), jnp.int32))
  apply = jax.jit(model.apply)  # eager apply dispatches op by op: minutes on CPU
  padded = apply({"params": params}, ids_BT, token_mask_BT=mask_BT)
  T = ids_BT.shape[1]
  alone_stats = []
  for b, prompt in enumerate(prompts):
    alone = apply({"params": params}, jnp.asarray([prompt], jnp.int32))
    assert_close(padded.logits[b:b + 1, T - len(prompt):], alone.logits, tol=1e-5,
                 name=f"row {b} ({len(prompt)} tokens)")
    alone_stats.append(alone.router_stats)
  # The router statistics count the real tokens only, layer by layer.
  summed = RouterStats(*(sum(s[i] for s in alone_stats) for i in range(3)))
  np.testing.assert_array_equal(np.asarray(padded.router_stats.tokens),
                                np.full(len(attn_types), float(sum(LENGTHS))))
  for name, got, want in zip(RouterStats._fields, padded.router_stats, summed):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5,
                               err_msg=name)
  np.testing.assert_allclose(float(padded.aux_loss), float(load_balancing_loss(summed)),
                             rtol=1e-5)


def test_scoring_left_padded_rollouts_gives_the_samplers_log_probs():
  """The RL loop: sample with the cache, then score [prompt + completion] rows, left-padded,
  with the cache-free forward; both must give the same log-probs of the sampled tokens."""
  config = _config((0, 0, 1) * 2)
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(1))
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, config.vocab_size, n).tolist() for n in (7, 2, 5)]
  new = 6
  out = generate(model, params, prompts, max_new_tokens=new, temperature=1.0, seed=0,
                 prefill_segment_len=4)
  rows = [p + out.tokens[b].tolist() for b, p in enumerate(prompts)]
  ids_BT, mask_BT = left_pad(rows)
  logits_BTV = jax.jit(model.apply)({"params": params}, ids_BT, token_mask_BT=mask_BT).logits
  # The token at t is scored by the logits at t - 1; the completion is each row's last `new`.
  log_probs_BTV = jax.nn.log_softmax(logits_BTV[:, -new - 1:-1], axis=-1)
  scored_BT = jnp.take_along_axis(log_probs_BTV, jnp.asarray(out.tokens)[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(scored_BT), out.log_probs, rtol=1e-5, atol=1e-5)
