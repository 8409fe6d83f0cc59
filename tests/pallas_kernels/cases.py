"""The adversarial case matrix and checks shared by the TPU and GPU lightning-kernel tests.

Every case has B*H = 6 (not a power of two) and slopes 1e-6 .. 20, and compares outputs and
every gradient (q, k, v, slope, initial_state; random cotangents on the output and the final
state) against the chunked reference. T in {1, C-1, C+1, several C} covers single-token,
tail-only and multi-chunk-with-tail paths; D 64 and 128; float32 and bfloat16.

The checks every kernel's test file runs are here too (`check_*`, `bad_input_params`,
`large_inputs`), so the TPU, Mosaic GPU and Triton tests differ only in the kernel call.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def bad_input_params():
  """bad_input_cases() as pytest params (change, match) with the case name as id."""
  return [pytest.param(change, match, id=name) for change, match, name in bad_input_cases()]


def check_bad_input(fn, fn_name: str, change, match: str, **kwargs) -> None:
  """`fn(q, k, v, slope, initial_state=..., **kwargs)` with one argument broken by `change`
  raises ValueError starting with `fn_name` and matching `match`."""
  (q, k, v, slope, state), _ = make_inputs(3, 64, jnp.float32)
  a = change(dict(q=q, k=k, v=v, slope=slope, state=state))
  with pytest.raises(ValueError, match=f"{fn_name}: .*" + match):
    fn(a["q"], a["k"], a["v"], a["slope"], initial_state=a["state"], **kwargs)


def large_inputs(t, d, dtype, seed=5, scale=30.0):
  """make_inputs with q, k, v times `scale`: with slopes 1e-6 next to 20, any overflow or
  cancellation in a kernel's decays shows up as a non-finite or wrong result."""
  args, cots = make_inputs(t, d, dtype, seed=seed)
  return tuple(x * scale if i < 3 else x for i, x in enumerate(args)), cots


def check_operator_routes(monkeypatch, module, impl: str):
  """`lightning_attention(impl=impl)` reaches `module.forward` and matches chunked.
  Returns the inputs it used, (q, k, v, slope, state)."""
  (q, k, v, slope, state), _ = make_inputs(BLOCK + 3, 64, jnp.float32, seed=7)
  calls = []
  original = module.forward
  monkeypatch.setattr(module, "forward",
                      lambda *a, **kw: calls.append(1) or original(*a, **kw))
  out, final = lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                                   block_size=BLOCK)
  assert calls, f"impl={impl!r} did not reach the kernel"
  ref_out, ref_final = lightning_attention(q, k, v, slope, initial_state=state,
                                           impl="chunked", block_size=BLOCK)
  assert_close(out, ref_out, name="out")
  assert_close(final, ref_final, name="final_state")
  return q, k, v, slope, state
