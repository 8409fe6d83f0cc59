"""Packed documents (segment_ids) in every lightning kernel, against chunked.

Each kernel runs in its interpret mode on CPU (compiled on a matching backend) and must match
`impl="chunked"` with the same segment ids in outputs, final state and all five gradients
(random cotangents on both outputs). The rows put document starts everywhere the chunk
masks can go wrong: inside a chunk, at a chunk's first and last token, one-token documents,
documents crossing chunk boundaries, an id that reappears after another (a new document),
trailing padding, and the tail chunk.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.ops import lightning_attention
from tests.assertions import assert_close
from tests.pallas_kernels.cases import B, H, SLOPES

BLOCK = 16
# Row 0 document lengths (T = 50, chunks of 16): starts at 0, 5, 15 (last token of chunk 0,
# a one-token document), 16 (first token of chunk 1), 30, 31 (crosses into chunk 2), 47 (the
# tail chunk). Row 1: id 3, padding 0, id 3 again (a third document), crossing chunks.
_ROW0 = [5, 10, 1, 14, 1, 16, 3]
_ROW1_IDS = [3] * 20 + [0] * 5 + [3] * 25
T = 50


def segment_ids(t: int = T) -> jax.Array:
  row0 = np.repeat(np.arange(1, len(_ROW0) + 1), _ROW0)
  ids = np.stack([row0, np.asarray(_ROW1_IDS)])[:B, :t]
  return jnp.asarray(ids, jnp.int32)


def inputs(t, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, t, H, d)) / np.sqrt(d), dtype)
             for _ in range(3))
  state = jnp.asarray(rng.standard_normal((B, H, d, d)), jnp.float32)
  cots = (jnp.asarray(rng.standard_normal((B, t, H, d)), dtype),
          jnp.asarray(rng.standard_normal((B, H, d, d)), jnp.float32))
  return (q, k, v, jnp.asarray(SLOPES, jnp.float32), state), cots


@functools.partial(jax.jit, static_argnames=("impl",))
def _value_and_vjp(args, cots, seg, *, impl):
  def f(q, k, v, slope, state):
    return lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                               block_size=BLOCK, segment_ids=seg)
  outs, pullback = jax.vjp(f, *args)
  return outs, pullback(cots)


def check_segments_against_chunked(impl: str, t: int, d: int, dtype) -> None:
  args, cots = inputs(t, d, dtype)
  seg = segment_ids(t)
  (out, final), grads = _value_and_vjp(args, cots, seg, impl=impl)
  (ref_out, ref_final), ref_grads = _value_and_vjp(args, cots, seg, impl="chunked")
  name = np.dtype(dtype).name
  assert out.dtype == dtype and final.dtype == jnp.float32
  assert_close(out, ref_out, dtype=name, name="out")
  assert_close(final, ref_final, dtype=name, name="final_state")
  for label, g, ref_g in zip(("dq", "dk", "dv", "dslope", "dstate"), grads, ref_grads):
    assert g.shape == ref_g.shape and g.dtype == ref_g.dtype, label
    assert_close(g, ref_g, dtype=name, name=label)


CASES = [(T, 64, jnp.float32), (T, 64, jnp.bfloat16), (37, 128, jnp.float32)]
KERNELS = ["pallas_tpu", "pallas_gpu", "pallas_triton"]


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-D{c[1]}-{np.dtype(c[2]).name}")
def test_kernel_with_segment_ids_matches_chunked(impl, case):
  check_segments_against_chunked(impl, *case)


def test_reference_semantics_the_kernels_are_held_to():
  # chunked with these ids equals documents run one by one (tests/ops proves it in
  # general); here only the final state of row 1, whose last document reuses id 3.
  (q, k, v, slope, state), _ = inputs(T, 64, jnp.float32)
  _, final = lightning_attention(q, k, v, slope, initial_state=state, impl="chunked",
                                 block_size=BLOCK, segment_ids=segment_ids())
  _, last_doc = lightning_attention(q[1:, 25:], k[1:, 25:], v[1:, 25:], slope, impl="naive")
  assert_close(final[1:], last_doc, name="row 1 final state")


@pytest.mark.parametrize("impl", KERNELS)
@pytest.mark.parametrize("bad, match", [
    (lambda s: s[:, :-1], "segment_ids must be int"),
    (lambda s: s.astype(jnp.float32), "segment_ids must be int"),
])
def test_bad_segment_ids_raise_naming_the_argument(impl, bad, match):
  (q, k, v, slope, state), _ = inputs(5, 64, jnp.float32)
  with pytest.raises(ValueError, match=match):
    lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                        segment_ids=bad(segment_ids(5)))
