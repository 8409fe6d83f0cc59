"""Trust chain for lightning attention: float64 numpy loop -> naive -> recurrent, chunked.

The numpy loop (and its hand-written backward) is the independent anchor; `naive` is checked
against it in float32, and every other implementation against `naive`, forward and all
gradients (q, k, v, slope, initial_state; random cotangents on both outputs), in float32
and bfloat16.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.ops import IMPLEMENTATIONS
from m1jax.ops import lightning_attention
from m1jax.ops import lightning_decode_step
from tests.assertions import assert_close

B, H, D = 2, 3, 16
BLOCK = 16
IMPLS = ("naive", "recurrent", "chunked", "chunked_parallel")
# 1 token, one short of a block, one past a block, several blocks.
SEQ_LENS = (1, BLOCK - 1, BLOCK + 1, 4 * BLOCK)
DTYPES = (jnp.float32, jnp.bfloat16)
_DTYPE_NAME = {jnp.float32: "f32", jnp.bfloat16: "bf16"}


def _case_id(b, t, h, d, dtype, *extra):
  return "-".join([f"B{b}", f"T{t}", f"H{h}", f"D{d}", _DTYPE_NAME[dtype], *extra])


def _slopes(h):
  # Spread like layer 0 of the model (docs/MODEL.md §6.2: 0.917 ... 0.0039).
  return jnp.asarray(np.geomspace(0.01, 1.0, h), jnp.float32)


def _inputs(t, dtype, *, h=H, seed=0, with_state=True):
  """Random q, k, v [B,T,H,D] in `dtype`, and an fp32 initial state (or None)."""
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, t, h, D)), dtype) for _ in range(3))
  state = jnp.asarray(rng.standard_normal((B, h, D, D)), jnp.float32) if with_state else None
  return q, k, v, state


def _cotangents(t, dtype, *, h=H, seed=1):
  rng = np.random.default_rng(seed)
  cot_out = jnp.asarray(rng.standard_normal((B, t, h, D)), dtype)
  cot_state = jnp.asarray(rng.standard_normal((B, h, D, D)), jnp.float32)
  return cot_out, cot_state


def _f32(*xs):
  return tuple(None if x is None else x.astype(jnp.float32) for x in xs)


@functools.partial(jax.jit, static_argnames=("impl", "block_size"))
def _forward(q, k, v, slope, state, *, impl, block_size=BLOCK):
  return lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                             block_size=block_size)


@functools.partial(jax.jit, static_argnames=("impl", "block_size"))
def _vjp(q, k, v, slope, state, cot_out, cot_state, *, impl, block_size=BLOCK):
  """Gradients (dq, dk, dv, dslope, dstate) of <out, cot_out> + <final_state, cot_state>."""

  def f(q, k, v, slope, state):
    return lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                               block_size=block_size)

  _, pullback = jax.vjp(f, q, k, v, slope, state)
  return pullback((cot_out, cot_state))


# --------------------------------------------------------------------------------------
# Independent float64 reference: the recurrence as a plain loop, and its backward by hand.
# --------------------------------------------------------------------------------------


def _np64(x):
  return np.asarray(np.asarray(x, np.float32), np.float64)


def _loop_states(q, k, v, slope, state):
  """S_t for t = -1 .. T-1 (float64), from S_t = lambda S_{t-1} + k_t^T v_t."""
  k, v = _np64(k), _np64(v)
  decay = np.exp(-_np64(slope))[None, :, None, None]
  states = [_np64(state) if state is not None else np.zeros((B, k.shape[2], D, D))]
  for t in range(k.shape[1]):
    states.append(decay * states[-1] + np.einsum("bhd,bhe->bhde", k[:, t], v[:, t]))
  return states


def reference_forward(q, k, v, slope, state):
  """(out [B,T,H,D], final_state [B,H,D,D]) in float64: o_t = q_t S_t."""
  states = _loop_states(q, k, v, slope, state)
  q = _np64(q)
  out = np.stack([np.einsum("bhd,bhde->bhe", q[:, t], states[t + 1])
                  for t in range(q.shape[1])], axis=1)
  return out, states[-1]


def reference_vjp(q, k, v, slope, state, cot_out, cot_state):
  """(dq, dk, dv, dslope, dstate) in float64 by reverse accumulation through the recurrence.

  grad_S carries dL/dS_t: it collects q_t^T dO_t from the read at step t and passes
  lambda * grad_S back to S_{t-1}; k_t and v_t enter S_t only through k_t^T v_t, and
  lambda = exp(-slope) through lambda * S_{t-1}.
  """
  states = _loop_states(q, k, v, slope, state)
  q, k, v, cot_out = _np64(q), _np64(k), _np64(v), _np64(cot_out)
  decay = np.exp(-_np64(slope))[None, :, None, None]
  dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)
  grad_s = _np64(cot_state)
  grad_decay = np.zeros(q.shape[2])
  for t in reversed(range(q.shape[1])):
    dq[:, t] = np.einsum("bhe,bhde->bhd", cot_out[:, t], states[t + 1])
    grad_s = grad_s + np.einsum("bhd,bhe->bhde", q[:, t], cot_out[:, t])
    dk[:, t] = np.einsum("bhde,bhe->bhd", grad_s, v[:, t])
    dv[:, t] = np.einsum("bhd,bhde->bhe", k[:, t], grad_s)
    grad_decay += np.einsum("bhde,bhde->h", grad_s, states[t])
    grad_s = decay * grad_s
  dslope = -np.exp(-_np64(slope)) * grad_decay
  return dq, dk, dv, dslope, grad_s


_GRAD_NAMES = ("dq", "dk", "dv", "dslope", "dstate")


# --------------------------------------------------------------------------------------
# The anchor: naive (float32) against the float64 loop.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, BLOCK + 1, 4 * BLOCK],
                         ids=lambda t: _case_id(B, t, H, D, jnp.float32))
def test_naive_matches_float64_loop(t):
  q, k, v, state = _inputs(t, jnp.float32)
  slope = _slopes(H)
  cot_out, cot_state = _cotangents(t, jnp.float32)

  out, final = _forward(q, k, v, slope, state, impl="naive")
  ref_out, ref_final = reference_forward(q, k, v, slope, state)
  assert_close(out, ref_out, name="out")
  assert_close(final, ref_final, name="final_state")

  grads = _vjp(q, k, v, slope, state, cot_out, cot_state, impl="naive")
  ref_grads = reference_vjp(q, k, v, slope, state, cot_out, cot_state)
  for name, g, ref_g in zip(_GRAD_NAMES, grads, ref_grads):
    assert_close(g, ref_g, name=name)


# --------------------------------------------------------------------------------------
# Every implementation against naive.
# --------------------------------------------------------------------------------------

_AGREE_CASES = [
    pytest.param(t, dtype, with_state,
                 id=_case_id(B, t, H, D, dtype, "state" if with_state else "nostate"))
    for t in SEQ_LENS for dtype in DTYPES for with_state in (False, True)
]


@pytest.mark.parametrize("t,dtype,with_state", _AGREE_CASES)
def test_forward_agrees_across_impls(t, dtype, with_state):
  q, k, v, state = _inputs(t, dtype, with_state=with_state)
  slope = _slopes(H)
  # The reference is always fp32 naive on the same (bf16-rounded) inputs.
  ref_out, ref_final = _forward(*_f32(q, k, v), slope, state, impl="naive")
  for impl in IMPLS:
    out, final = _forward(q, k, v, slope, state, impl=impl)
    assert out.dtype == dtype and out.shape == q.shape
    assert final.dtype == jnp.float32 and final.shape == (B, H, D, D)
    assert_close(out, ref_out, dtype=dtype, name=f"{impl} out")
    assert_close(final, ref_final, dtype=dtype, name=f"{impl} final_state")


_GRAD_CASES = [
    pytest.param(t, dtype, id=_case_id(B, t, H, D, dtype))
    for t in SEQ_LENS[1:] for dtype in DTYPES
]


@pytest.mark.parametrize("t,dtype", _GRAD_CASES)
def test_gradients_agree_across_impls(t, dtype):
  q, k, v, state = _inputs(t, dtype)
  slope = _slopes(H)
  cot_out, cot_state = _cotangents(t, dtype)
  ref_grads = _vjp(*_f32(q, k, v), slope, state, *_f32(cot_out), cot_state, impl="naive")
  for impl in IMPLS:
    grads = _vjp(q, k, v, slope, state, cot_out, cot_state, impl=impl)
    for name, g, ref_g in zip(_GRAD_NAMES, grads, ref_grads):
      assert_close(g, ref_g, dtype=dtype, name=f"{impl} {name}")


# --------------------------------------------------------------------------------------
# Numerical range, block sizes, continuation.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("t,block_size", [(4 * BLOCK, BLOCK), (300, 256)],
                         ids=lambda x: str(x))
def test_extreme_slopes_are_finite_and_agree(t, block_size):
  h = 4
  q, k, v, state = _inputs(t, jnp.float32, h=h)
  # exp(-20 * 255) underflows to 0 and exp(-1e-6 * t) is ~1: both ends of the model's range.
  slope = jnp.asarray(np.geomspace(1e-6, 20.0, h), jnp.float32)
  cot_out, cot_state = _cotangents(t, jnp.float32, h=h)
  ref_out, ref_final = reference_forward(q, k, v, slope, state)
  ref_grads = reference_vjp(q, k, v, slope, state, cot_out, cot_state)
  for impl in IMPLS:
    out, final = _forward(q, k, v, slope, state, impl=impl, block_size=block_size)
    assert_close(out, ref_out, name=f"{impl} out")
    assert_close(final, ref_final, name=f"{impl} final_state")
    grads = _vjp(q, k, v, slope, state, cot_out, cot_state, impl=impl, block_size=block_size)
    for name, g, ref_g in zip(_GRAD_NAMES, grads, ref_grads):
      assert_close(g, ref_g, name=f"{impl} {name}")  # also fails on any inf/NaN


@pytest.mark.parametrize("impl", ["chunked", "chunked_parallel"])
@pytest.mark.parametrize("block_size", [1, 5, 16, 36, 37, 38, 256],
                         ids=lambda c: f"C{c}")
def test_chunked_any_block_size(block_size, impl):
  t = 37  # prime: no block size but 1 and 37 divides it
  q, k, v, state = _inputs(t, jnp.float32)
  slope = _slopes(H)
  cot_out, cot_state = _cotangents(t, jnp.float32)
  ref_out, ref_final = _forward(q, k, v, slope, state, impl="naive")
  out, final = _forward(q, k, v, slope, state, impl=impl, block_size=block_size)
  assert_close(out, ref_out, name="out")
  assert_close(final, ref_final, name="final_state")
  ref_grads = _vjp(q, k, v, slope, state, cot_out, cot_state, impl="naive")
  grads = _vjp(q, k, v, slope, state, cot_out, cot_state, impl=impl,
               block_size=block_size)
  for name, g, ref_g in zip(_GRAD_NAMES, grads, ref_grads):
    assert_close(g, ref_g, name=name)


def test_default_block_size_and_auto():
  t = 300  # one full default block of 256 plus a tail
  q, k, v, state = _inputs(t, jnp.float32)
  slope = _slopes(H)
  ref_out, ref_final = _forward(q, k, v, slope, state, impl="naive")
  out, final = _forward(q, k, v, slope, state, impl="auto", block_size=None)
  assert_close(out, ref_out, name="out")
  assert_close(final, ref_final, name="final_state")


@pytest.mark.parametrize("prefix", [1, BLOCK, 23], ids=lambda p: f"prefix{p}")
def test_prefill_then_continue_equals_one_pass(prefix):
  t = 50
  q, k, v, _ = _inputs(t, jnp.float32, with_state=False)
  slope = _slopes(H)
  full_out, full_final = _forward(q, k, v, slope, None, impl="chunked")

  head_out, state = _forward(q[:, :prefix], k[:, :prefix], v[:, :prefix], slope, None,
                             impl="chunked")
  # Continue as a second chunked prefill from the cached state ...
  tail_out, final = _forward(q[:, prefix:], k[:, prefix:], v[:, prefix:], slope, state,
                             impl="chunked")
  assert_close(jnp.concatenate([head_out, tail_out], axis=1), full_out, name="out")
  assert_close(final, full_final, name="final_state")

  # ... and as token-by-token decode.
  decode_step = jax.jit(lightning_decode_step)
  decoded = []
  for i in range(prefix, t):
    out_i, state = decode_step(q[:, i], k[:, i], v[:, i], slope, state)
    decoded.append(out_i)
  assert_close(jnp.stack(decoded, axis=1), full_out[:, prefix:], name="decode out")
  assert_close(state, full_final, name="decode final_state")


@pytest.mark.parametrize("impl", IMPLS)
def test_causality(impl):
  """Output t has exactly zero gradient with respect to inputs after t."""
  t, pos = 37, 20
  q, k, v, _ = _inputs(t, jnp.float32, with_state=False)
  slope = _slopes(H)

  def out_at_pos(q, k, v):
    out, _ = lightning_attention(q, k, v, slope, impl=impl, block_size=BLOCK)
    return jnp.sum(out[:, pos])

  grads = jax.jit(jax.grad(out_at_pos, argnums=(0, 1, 2)))(q, k, v)
  for name, g in zip(("dq", "dk", "dv"), grads):
    assert np.all(np.asarray(g[:, pos + 1:]) == 0), f"{name} leaks from the future"
    assert np.any(np.asarray(g[:, :pos + 1]) != 0), f"{name} is zero on the past"


# --------------------------------------------------------------------------------------
# Input validation.
# --------------------------------------------------------------------------------------


def _bad_kwargs(case):
  q, k, v, state = _inputs(5, jnp.float32)
  kwargs = dict(q=q, k=k, v=v, slope=_slopes(H), initial_state=state)
  if case == "rank":
    kwargs.update(q=q[0], k=k[0], v=v[0])
  elif case == "shape":
    kwargs.update(k=k[:, :4])
  elif case == "dtype":
    kwargs.update(v=v.astype(jnp.bfloat16))
  elif case == "slope":
    kwargs.update(slope=_slopes(H + 1))
  elif case == "initial_state":
    kwargs.update(initial_state=state[:, :, :-1])
  elif case == "block_size":
    kwargs.update(block_size=0)
  elif case == "impl":
    kwargs.update(impl="bogus")
  return kwargs


@pytest.mark.parametrize("case,message", [
    ("rank", "q must have rank 4"),
    ("shape", "q, k, v must share"),
    ("dtype", "dtype"),
    ("slope", "slope"),
    ("initial_state", "initial_state"),
    ("block_size", "block_size"),
    ("impl", "impl='bogus'"),
])
def test_bad_inputs_raise(case, message):
  kwargs = _bad_kwargs(case)
  with pytest.raises(ValueError, match=message) as info:
    lightning_attention(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), kwargs.pop("slope"),
                        **kwargs)
  if case == "impl":
    for name in ["auto", *IMPLEMENTATIONS]:
      assert repr(name) in str(info.value)


def test_decode_step_bad_state_raises():
  q, k, v, state = _inputs(1, jnp.float32)
  with pytest.raises(ValueError, match="state"):
    lightning_decode_step(q[:, 0], k[:, 0], v[:, 0], _slopes(H), state[0])
