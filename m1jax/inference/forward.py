"""Jitted cached forwards: a prefill segment and the decode step (both donate the cache).

They are built once per ModelConfig (a frozen, hashable dataclass), so every call with the
same config and shapes reuses one compiled program.
"""
import functools

import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.inference.cache import HybridCache
from m1jax.model import MiniMaxM1ForCausalLM


def decode_fn(config: ModelConfig):
  """The un-jitted decode step (params, cache, tokens_B) -> (logits_BV, cache), for callers
  that trace it into a larger program (generate's on-device decode loop)."""
  model = MiniMaxM1ForCausalLM(config)

  def decode(params, cache, tokens_B):
    out, cache = model.apply({"params": params}, tokens_B[:, None], cache=cache)
    return out.logits[:, -1], cache

  return decode


@functools.lru_cache(maxsize=None)
def _compiled_steps(config: ModelConfig):
  model = MiniMaxM1ForCausalLM(config)

  def segment(params, cache, ids_BT, token_mask_BT):
    out, cache = model.apply({"params": params}, ids_BT, token_mask_BT=token_mask_BT,
                             cache=cache, last_logits_only=True)
    return out.logits[:, -1], cache

  return (jax.jit(segment, donate_argnums=(1,)),
          jax.jit(decode_fn(config), donate_argnums=(1,)))


def prefill_segment(config: ModelConfig, params, cache: HybridCache, ids_BT: jax.Array,
                    token_mask_BT: jax.Array):
  """Runs T new (left-padded) tokens through the cache -> (logits_BV of the last slot, cache).

  `cache` is donated: do not use it after the call.
  """
  return _compiled_steps(config)[0](params, cache, ids_BT, token_mask_BT)


def decode_step(config: ModelConfig, params, cache: HybridCache, tokens_B: jax.Array):
  """One token per row -> (logits_BV float32, cache). Lightning layers cost O(H D^2) per row
  whatever the context length; softmax layers read the KV cache. `cache` is donated."""
  return _compiled_steps(config)[1](params, cache, jnp.asarray(tokens_B, jnp.int32))
