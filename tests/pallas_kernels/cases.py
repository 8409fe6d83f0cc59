"""The adversarial case matrix and checks shared by the TPU and GPU lightning-kernel tests.

Every case has B*H = 6 (not a power of two) and slopes 1e-6 .. 20, and compares outputs and
every gradient (q, k, v, slope, initial_state; random cotangents on the output and the final
state) against the chunked reference. T in {1, C-1, C+1, several C} covers single-token,
tail-only and multi-chunk-with-tail paths; D 64 and 128; float32 and bfloat16.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from m1jax.ops import lightning_attention
from tests.assertions import assert_close

B, H = 2, 3             # B*H = 6, not a power of two
BLOCK = 16
# Extremes of the model's range (docs/MODEL.md §6.2 spans 4.9e-5 .. 0.92) and beyond.
SLOPES = (1e-6, 0.5, 20.0)
_DTYPE_NAME = {jnp.float32: "f32", jnp.bfloat16: "bf16"}

CASES = [
    # (T, D, dtype)
    *[(t, 64, dt) for dt in (jnp.float32, jnp.bfloat16)
      for t in (1, BLOCK - 1, BLOCK + 1, 4 * BLOCK)],
    (2 * BLOCK + 5, 128, jnp.float32),
    (3 * BLOCK, 128, jnp.bfloat16),
]


def case_id(case):
  t, d, dtype = case
  return f"B{B}-T{t}-H{H}-D{d}-{_DTYPE_NAME[dtype]}"


def make_inputs(t, d, dtype, seed=0):
  """((q, k, v, slope, initial_state), (d_out, d_final_state)) for one case."""
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, t, H, d)) / np.sqrt(d), dtype)
             for _ in range(3))
  state = jnp.asarray(rng.standard_normal((B, H, d, d)), jnp.float32)
  cot_out = jnp.asarray(rng.standard_normal((B, t, H, d)), dtype)
  cot_state = jnp.asarray(rng.standard_normal((B, H, d, d)), jnp.float32)
  return (q, k, v, jnp.asarray(SLOPES, jnp.float32), state), (cot_out, cot_state)


@functools.partial(jax.jit, static_argnames=("kernel",))
def value_and_vjp(args, cots, *, kernel):
  """((out, final_state), (dq, dk, dv, dslope, dstate)). `kernel` is a hashable callable
  (q, k, v, slope, state) -> (out, final_state), or an operator impl name."""

  def f(q, k, v, slope, state):
    if isinstance(kernel, str):
      return lightning_attention(q, k, v, slope, initial_state=state, impl=kernel,
                                 block_size=BLOCK)
    return kernel(q, k, v, slope, state)

  outs, pullback = jax.vjp(f, *args)
  return outs, pullback(cots)


def check_against_chunked(kernel, args, cots, dtype, reference="chunked"):
  """Asserts `kernel` matches impl="chunked" (or a `reference` callable wrapping it, e.g.
  with segment ids) in outputs, dtypes and all five gradients."""
  (out, final), grads = value_and_vjp(args, cots, kernel=kernel)
  (ref_out, ref_final), ref_grads = value_and_vjp(args, cots, kernel=reference)
  name = np.dtype(dtype).name
  assert out.dtype == dtype and final.dtype == jnp.float32
  assert_close(out, ref_out, dtype=name, name="out")
  assert_close(final, ref_final, dtype=name, name="final_state")
  for label, g, ref_g in zip(("dq", "dk", "dv", "dslope", "dstate"), grads, ref_grads):
    assert g.shape == ref_g.shape and g.dtype == ref_g.dtype, label
    assert_close(g, ref_g, dtype=name, name=label)


def bad_input_cases():
  """(change, match, id) triples: each change breaks one argument of a valid call."""
  return [
      (lambda a: {**a, "k": a["k"][:, :-1]}, "q, k, v must share one", "shape"),
      (lambda a: {**a, "v": a["v"].astype(jnp.bfloat16)}, "q, k, v must share one dtype",
       "dtype-mismatch"),
      (lambda a: {n: (x.astype(jnp.float16) if n in "qkv" else x) for n, x in a.items()},
       "dtype must be float32 or bfloat16", "dtype-f16"),
      (lambda a: {**{n: a[n][..., :32] for n in "qkv"}, "slope": a["slope"], "state": None},
       "head_dim D=32", "head_dim"),
      (lambda a: {**a, "slope": a["slope"][:2]}, "slope must have shape", "slope-len"),
      (lambda a: {**a, "slope": a["slope"][:, None]}, "slope must have shape", "slope-rank"),
      (lambda a: {**a, "state": a["state"][:, :, :8]}, "initial_state must have shape",
       "state"),
  ]
