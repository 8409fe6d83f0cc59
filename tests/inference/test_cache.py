"""The hybrid cache against the full forward: decode-step logits at every position, segmented
vs one-piece prefill, left padding, and a lightning state whose size ignores context length.

Compiling a program costs seconds on CPU, so the tests share one capacity (MAX_LEN), batch 2
and 5-token prefill segments wherever the property allows: the scanned config's decode and
its 1- and 5-token prefill programs are each compiled once per process. test_generate.py
uses the same config, capacity (generate's default bucket) and segments, so it reuses them.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import inference
from m1jax.model import MiniMaxM1ForCausalLM
from tests.assertions import assert_close
from tests.helpers import random_ids, random_params, tiny_config

SCANNED = (0, 0, 0, 1) * 2   # period 4, two groups
UNROLLED = (0, 1, 0)         # non-periodic
MAX_LEN = 64


@functools.lru_cache(maxsize=None)
def _model(types):
  """(config, params, jitted full-forward logits) per layer-type list, built once."""
  cfg = tiny_config(types)
  model = MiniMaxM1ForCausalLM(cfg)
  full = jax.jit(lambda params, ids: model.apply({"params": params}, ids).logits)
  return cfg, random_params(cfg, 0), full


@pytest.mark.parametrize("types, first", [(SCANNED, "prefill"), (UNROLLED, "decode")],
                         ids=["scanned", "unrolled"])
def test_decode_logits_equal_full_forward_at_every_position(types, first):
  """Position 0 by a 1-token prefill (scanned: the prefill -> decode hand-off) or by a decode
  step on the empty cache (unrolled: one compile fewer); every later position by decode."""
  cfg, params, full_fn = _model(types)
  ids = random_ids(1, 2, 19)
  full = full_fn(params, ids)
  cache = inference.init_cache(cfg, 2, MAX_LEN)
  if first == "prefill":
    logits, cache = inference.prefill(cfg, params, cache, ids[:, :1],
                                      jnp.ones((2, 1), jnp.int32))
  else:
    logits, cache = inference.decode_step(cfg, params, cache, ids[:, 0])
  assert_close(logits, full[:, 0], tol=1e-5, name="position 0")
  for t in range(1, ids.shape[1]):
    logits, cache = inference.decode_step(cfg, params, cache, ids[:, t])
    assert_close(logits, full[:, t], tol=1e-5, name=f"position {t}")
  np.testing.assert_array_equal(cache.lengths, [19, 19])
  assert int(cache.index) == 19


def _prefill(cfg, params, ids, mask, segment_len):
  cache = inference.init_cache(cfg, ids.shape[0], MAX_LEN)
  return inference.prefill(cfg, params, cache, ids, mask, segment_len)


def test_segmented_prefill_equals_one_piece():
  cfg, params, _ = _model(SCANNED)
  ids, mask = inference.left_pad([[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                   21, 22, 23, 24, 25], [3, 4, 5, 6, 7, 8, 9, 10, 11]])
  one_logits, one = _prefill(cfg, params, ids, mask, segment_len=64)
  seg_logits, seg = _prefill(cfg, params, ids, mask, segment_len=5)  # 1 + 4*5 tokens
  assert_close(seg_logits, one_logits, tol=1e-5, name="last logits")
  pads = np.asarray(one.index - one.lengths)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(seg.layers),
                          jax.tree.leaves(one.layers)):
    for row, pad in enumerate(pads):
      # Padded KV slots are never read (their key position is EMPTY_POSITION).
      a_row, b_row = a[:, row], b[:, row]
      if path[-1].key != "state":
        a_row, b_row = a_row[:, pad:], b_row[:, pad:]
      assert_close(a_row, b_row, tol=1e-5, name=f"{jax.tree_util.keystr(path)} row {row}")
  np.testing.assert_array_equal(seg.lengths, [21, 9])


def test_left_padding_leaves_state_and_logits_as_alone():
  """A padded row's cache and next-token logits equal those of the row run unpadded.

  The batch (T = 10, two 5-token segments) pads row 0 by 4: its first segment is 4 pads and
  1 real token, so padding and real tokens share a segment; alone (T = 6: 1 + 5 tokens) the
  row has no padding.
  """
  cfg, params, _ = _model(SCANNED)
  prompt = [7, 1, 33, 2, 90, 41]
  ids, mask = inference.left_pad([prompt, list(range(10, 20))])
  batch_logits, batch = _prefill(cfg, params, ids, mask, segment_len=5)
  alone_logits, alone = _prefill(cfg, params, jnp.asarray([prompt]),
                                 jnp.ones((1, len(prompt)), jnp.int32), segment_len=5)
  assert_close(batch_logits[0], alone_logits[0], tol=1e-5, name="logits")
  for j in range(4):
    for key, entry in batch.layers["groups"][f"layer_{j}"].items():
      # Row 0's real tokens are slots [4, 10) in the batch, [0, 6) alone.
      a, b = entry[:, 0], alone.layers["groups"][f"layer_{j}"][key][:, 0]
      if key != "state":
        a, b = a[:, 4:10], b[:, :6]
      assert_close(a, b, tol=1e-5, name=f"layer_{j} {key}")
  np.testing.assert_array_equal(batch.lengths, [6, 10])
  np.testing.assert_array_equal(alone.lengths, [6])


def test_lightning_state_size_does_not_depend_on_context_length():
  cfg = tiny_config(SCANNED)
  H, D = cfg.num_attention_heads, cfg.head_dim
  short, long = inference.init_cache(cfg, 3, 16), inference.init_cache(cfg, 3, 1 << 16)
  for j in range(3):
    for c in (short, long):
      state = c.layers["groups"][f"layer_{j}"]["state"]
      assert state.shape == (2, 3, H, D, D) and state.dtype == jnp.float32
  assert inference.cache_bytes(short)["lightning_state"] == \
      inference.cache_bytes(long)["lightning_state"]
  assert long.layers["groups"]["layer_3"]["k"].shape == (2, 3, 1 << 16, 2, D)
  assert long.max_len == 1 << 16
  lightning_only = inference.init_cache(tiny_config((0, 0)), 3, 1 << 20)
  assert lightning_only.max_len is None
  assert inference.cache_bytes(lightning_only) == {"lightning_state": 2 * 3 * H * D * D * 4,
                                                   "kv": 0}
