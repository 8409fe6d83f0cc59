"""Segmented prefill: the prompt runs through the model `segment_len` tokens at a time, so
lightning layers hold one [B,H,D,D] state plus one segment's activations whatever the prompt
length (docs/MODEL.md §6.4 chunked form, continued from the cache); softmax layers fill the
KV cache as they go.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.inference.cache import HybridCache
from m1jax.inference.forward import prefill_segment

DEFAULT_SEGMENT_LEN = 2048


def prefill(config: ModelConfig, params, cache: HybridCache, ids_BT: jax.Array,
            token_mask_BT: jax.Array, segment_len: int = DEFAULT_SEGMENT_LEN):
  """Left-padded prompts [B,T] (mask 1 = real token) -> (last-position logits_BV, cache).

  Segments: a first one of T mod segment_len tokens (if any), then full ones, so at most two
  programs are compiled per prompt length. `cache` is donated.
  """
  if segment_len < 1:
    raise ValueError(f"prefill: segment_len must be >= 1; got {segment_len}")
  T = ids_BT.shape[1]
  if T < 1:
    raise ValueError("prefill: the prompt batch has no tokens")
  first = T % segment_len or min(segment_len, T)
  bounds = [0, first] + list(range(first + segment_len, T + 1, segment_len))
  logits_BV = None
  for start, stop in zip(bounds[:-1], bounds[1:]):
    logits_BV, cache = prefill_segment(config, params, cache, ids_BT[:, start:stop],
                                       token_mask_BT[:, start:stop])
  return logits_BV, cache


def left_pad(prompts, pad_id: int = 0, length: Optional[int] = None):
  """A list of 1-D token sequences -> (ids_BT int32, token_mask_BT int32), left-padded to
  `length` (default: the longest prompt)."""
  T = max(len(p) for p in prompts)
  if length is not None:
    if length < T:
      raise ValueError(f"left_pad: length {length} is shorter than the longest prompt ({T})")
    T = length
  ids = [[pad_id] * (T - len(p)) + list(p) for p in prompts]
  mask = [[0] * (T - len(p)) + [1] * len(p) for p in prompts]
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
