"""segment_ids in lightning attention: packed documents equal documents run separately.

Each implementation runs a packed row and is compared, document by document, with the same
implementation on that document alone (zero state, or the row's initial state for the first
document); the final state must be the last document's state. Gradients agree across
implementations.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.ops import lightning_attention
from tests.assertions import assert_close

H, D, BLOCK = 2, 8, 8
IMPLS = ("naive", "recurrent", "chunked", "chunked_parallel")
# Document lengths per row: crossing block edges, a 1-token doc, trailing padding (id 0).
ROWS = ([5, 11, 1, 3], [20])
T = 20


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((len(ROWS), T, H, D)) * 0.5, jnp.float32)
             for _ in range(3))
  seg = np.zeros((len(ROWS), T), np.int32)
  for b, lengths in enumerate(ROWS):
    start = 0
    for i, n in enumerate(lengths):
      seg[b, start:start + n] = i + 1 if i < 3 else 0  # the 4th "doc" of row 0 is padding
      start += n
  state = jnp.asarray(rng.standard_normal((len(ROWS), H, D, D)) * 0.1, jnp.float32)
  slope = jnp.asarray([0.05, 0.7], jnp.float32)
  return q, k, v, slope, jnp.asarray(seg), state


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_equals_separate_documents(impl):
  q, k, v, slope, seg, state = _inputs()
  out, final = lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                                   block_size=BLOCK, segment_ids=seg)
  for b, lengths in enumerate(ROWS):
    start = 0
    for i, n in enumerate(lengths):
      sl = slice(start, start + n)
      init = state[b:b + 1] if i == 0 else None
      ref_out, ref_final = lightning_attention(q[b:b + 1, sl], k[b:b + 1, sl], v[b:b + 1, sl],
                                               slope, initial_state=init, impl="naive")
      assert_close(out[b:b + 1, sl], ref_out, name=f"{impl}-row{b}-doc{i}")
      start += n
    assert_close(final[b:b + 1], ref_final, name=f"{impl}-row{b}-final")


def test_single_segment_is_same_as_no_segments():
  q, k, v, slope, _, state = _inputs()
  for impl in IMPLS:
    a = lightning_attention(q, k, v, slope, initial_state=state, impl=impl, block_size=BLOCK)
    b = lightning_attention(q, k, v, slope, initial_state=state, impl=impl, block_size=BLOCK,
                            segment_ids=jnp.ones(q.shape[:2], jnp.int32))
    assert_close(b[0], a[0], name=impl)
    assert_close(b[1], a[1], name=impl)


def test_gradients_agree_across_impls():
  q, k, v, slope, seg, state = _inputs(1)
  ct = jnp.asarray(np.random.default_rng(2).standard_normal(q.shape), jnp.float32)

  def loss(impl, *args):
    out, final = lightning_attention(*args, impl=impl, block_size=BLOCK, segment_ids=seg)
    return jnp.sum(out * ct) + jnp.sum(final)

  def grads(impl):
    return jax.grad(lambda *a: loss(impl, *a), argnums=(0, 1, 2, 3))(q, k, v, slope)

  ref = grads("naive")
  for impl in ("recurrent", "chunked"):
    for name, g, r in zip("qkvs", grads(impl), ref):
      assert_close(g, r, name=f"{impl}-d{name}")


def test_bad_segment_ids_raise():
  q, k, v, slope, seg, _ = _inputs()
  with pytest.raises(ValueError, match="segment_ids"):
    lightning_attention(q, k, v, slope, segment_ids=seg[:, :-1])
