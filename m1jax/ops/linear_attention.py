"""Lightning (linear) attention with per-head exponential decay, in pure JAX.

Math (docs/MODEL.md §6.3; no normalizer, no 1/sqrt(D) scaling), per batch row and head, with
decay lambda = exp(-slope):

  S_t = lambda * S_{t-1} + k_t^T v_t        # [D, D] state, includes the current token
  o_t = q_t S_t
      = sum_{j<=t} lambda^(t-j) (q_t . k_j) v_j  +  lambda^(t+1) q_t S_{-1}

Three implementations of that one function sit behind `lightning_attention(impl=...)`:
  "naive":     the O(T^2) masked form ((Q K^T) * M) V plus closed-form final state.
  "recurrent": a `lax.scan` over tokens of `lightning_decode_step` (the decode path).
  "chunked":   a `lax.scan` over blocks of C tokens carrying the fp32 state (prefill and
               training path); intra-block masked matmul + inter-block state read.
"auto" resolves to the first kernel in `AUTO_CANDIDATES` that supports the inputs on this
backend ("pallas_tpu" on TPU, "pallas_gpu" on GPU), else "chunked"; Pallas kernels register
themselves in `IMPLEMENTATIONS` (see m1jax/ops/__init__.py).

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C block length,
Z blocks. S is a second (key-side) time axis beside T or C, and J the value-side head dim where
two head dims meet in one einsum, so a state [B,H,D,D] reads 'bhdj' (key dim D, value dim J,
both of size D).

Precision: decay factors and the state are float32. Every matmul takes its operands in the
input dtype (bf16 stays bf16 on the MXU) and accumulates in float32 through
`preferred_element_type`; that matches the remote code, which also reads the fp32 state
through `kv.to(q.dtype)`. Outputs are cast back to q.dtype. (On CPU the matmul operands
are upcast to float32 to dodge an XLA:CPU gap; see `_matmul`. The numbers are unchanged.)

Numerical safety: slopes range over ~1e-6..20 and blocks over 256 positions, so exp(+s*i)
factorisations overflow. Every decay here is exp(-s * n) with n >= 0, and masked entries are
zeroed with `where` after clamping the exponent, so neither the forward nor the gradient
meets inf * 0.
"""
import operator
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# The remote code's BLOCK constant (docs/MODEL.md §3.1).
DEFAULT_BLOCK_SIZE = 256

_F32 = jnp.float32


def _matmul(subscripts: str, a: Array, b: Array) -> Array:
  """einsum with float32 accumulation; operands stay in their own dtype off CPU.

  XLA:CPU cannot run every bf16 x bf16 -> f32 dot: a dot that falls back to its generic
  DotThunk fails at run time with "Unsupported element type ... BF16 x BF16 = F32"
  (seen with jax 0.10.2 for 'bthd,bhdj->bthj'). On CPU the operands are upcast instead;
  a bf16 x bf16 product is exact in float32, so this gives the same numbers as a bf16 MXU
  with float32 accumulation, up to summation order.
  """
  if jax.default_backend() == "cpu":
    a, b = a.astype(_F32), b.astype(_F32)
  return jnp.einsum(subscripts, a, b, preferred_element_type=_F32)


# --------------------------------------------------------------------------------------
# Decay factors (all float32, exponents always <= 0).
# --------------------------------------------------------------------------------------


def _causal_decay(slope_H: Array, length: int) -> Array:
  """Returns decay_HTS[h, t, s] = exp(-slope_h * (t - s)) for t >= s else 0; float32 [H,T,T]."""
  pos_T = jnp.arange(length, dtype=_F32)
  gap_TS = pos_T[:, None] - pos_T[None, :]
  # Clamp before exp: exp(-s*(t-s)) for t < s is exp(+...), which overflows for large slopes
  # and would turn the masked zeros (and their gradients) into inf * 0 = NaN.
  decay_HTS = jnp.exp(-slope_H[:, None, None] * jnp.maximum(gap_TS, 0.0)[None])
  return jnp.where((gap_TS >= 0)[None], decay_HTS, 0.0)


def _scale_rows(x_BTHD: Array, decay_HT: Array) -> Array:
  """x * decay broadcast over B and D, computed in fp32 and returned in x's dtype."""
  scaled = x_BTHD.astype(_F32) * decay_HT.T[None, :, :, None]
  return scaled.astype(x_BTHD.dtype)


def _span_forward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array,
                  state_BHDD: Optional[Array]) -> tuple[Array, Array]:
  """Exact lightning attention over one span of T tokens, starting from `state_BHDD`.

  This is the chunked update of docs/MODEL.md §6.4 for one block of length m = T:
    O     = ((Q K^T) * Diag) V + (Q * qdecay) S_prev,   qdecay[i] = exp(-s (i+1))
    S_new = exp(-s m) S_prev + (K * kdecay)^T V,        kdecay[j] = exp(-s (m-1-j))
  Applied to the whole sequence it is the naive O(T^2) form; applied per block it is the
  body of the chunked scan.

  Args:
    q_BTHD, k_BTHD, v_BTHD: [B,T,H,D], one float dtype.
    slope_H: [H] float32.
    state_BHDD: [B,H,D,D] float32, or None for a zero state (skips the state read).

  Returns:
    out_BTHD: [B,T,H,D] in q's dtype.
    new_state_BHDD: [B,H,D,D] float32, the state after the last token of the span.
  """
  dtype = q_BTHD.dtype
  length = q_BTHD.shape[1]
  pos_T = jnp.arange(length, dtype=_F32)

  decay_HTS = _causal_decay(slope_H, length)
  scores_BHTS = _matmul("bthd,bshd->bhts", q_BTHD, k_BTHD)
  scores_BHTS = scores_BHTS * decay_HTS[None]
  out_BTHJ = _matmul("bhts,bshj->bthj", scores_BHTS.astype(dtype), v_BTHD)

  # Token j's k^T v decays once per later token of the span before the span ends.
  k_decay_HT = jnp.exp(-slope_H[:, None] * (length - 1 - pos_T)[None, :])
  kv_BHDJ = _matmul("bthd,bthj->bhdj", _scale_rows(k_BTHD, k_decay_HT), v_BTHD)
  if state_BHDD is None:
    return out_BTHJ.astype(dtype), kv_BHDJ

  # 1-based: by token i the carried state has decayed i+1 times (S includes token i).
  q_decay_HT = jnp.exp(-slope_H[:, None] * (pos_T + 1.0)[None, :])
  out_BTHJ = out_BTHJ + _matmul("bthd,bhdj->bthj", _scale_rows(q_BTHD, q_decay_HT),
                                state_BHDD.astype(dtype))
  span_decay_H = jnp.exp(-slope_H * length)
  new_state_BHDJ = span_decay_H[None, :, None, None] * state_BHDD + kv_BHDJ
  return out_BTHJ.astype(dtype), new_state_BHDJ


def _span_forward_segments(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array,
                           state_BHDD: Array, run_BT: Array,
                           state_run_B: Array) -> tuple[Array, Array]:
  """`_span_forward` for packed documents: no token sees another document.

  run_BT holds non-decreasing document indices (`_document_runs`); state_run_B is the
  document the incoming state belongs to. A token reads the carried state only while it is
  still in that document, and the new state keeps only the span's last document (plus the
  carried state if that document started before the span).
  """
  dtype = q_BTHD.dtype
  length = q_BTHD.shape[1]
  pos_T = jnp.arange(length, dtype=_F32)
  same_BTS = run_BT[:, :, None] == run_BT[:, None, :]
  decay_HTS = _causal_decay(slope_H, length)
  scores_BHTS = _matmul("bthd,bshd->bhts", q_BTHD, k_BTHD)
  scores_BHTS = jnp.where(same_BTS[:, None], scores_BHTS * decay_HTS[None], 0.0)
  out_BTHJ = _matmul("bhts,bshj->bthj", scores_BHTS.astype(dtype), v_BTHD)

  last_run_B = run_BT[:, -1]
  in_last_BT = (run_BT == last_run_B[:, None]).astype(_F32)
  k_decay_HT = jnp.exp(-slope_H[:, None] * (length - 1 - pos_T)[None, :])
  k_scaled = (k_BTHD.astype(_F32) * k_decay_HT.T[None, :, :, None]
              * in_last_BT[:, :, None, None]).astype(k_BTHD.dtype)
  kv_BHDJ = _matmul("bthd,bthj->bhdj", k_scaled, v_BTHD)

  reads_state_BT = (run_BT == state_run_B[:, None]).astype(_F32)
  q_decay_HT = jnp.exp(-slope_H[:, None] * (pos_T + 1.0)[None, :])
  q_scaled = (q_BTHD.astype(_F32) * q_decay_HT.T[None, :, :, None]
              * reads_state_BT[:, :, None, None]).astype(dtype)
  out_BTHJ = out_BTHJ + _matmul("bthd,bhdj->bthj", q_scaled, state_BHDD.astype(dtype))
  keeps_state_B = (last_run_B == state_run_B).astype(_F32)
  span_decay_BH = jnp.exp(-slope_H * length)[None, :] * keeps_state_B[:, None]
  new_state_BHDJ = span_decay_BH[:, :, None, None] * state_BHDD + kv_BHDJ
  return out_BTHJ.astype(dtype), new_state_BHDJ


def _document_runs(segment_ids_BT: Array) -> Array:
  """Document index per token: +1 wherever the segment id changes, 0 for the first run.

  A document is a maximal run of equal ids, so ids may repeat across non-adjacent documents
  (e.g. padding 0 between rows) without ever joining them.
  """
  changes_BT = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
  return jnp.concatenate([jnp.zeros_like(segment_ids_BT[:, :1], jnp.int32),
                          jnp.cumsum(changes_BT.astype(jnp.int32), axis=1)], axis=1)


# --------------------------------------------------------------------------------------
# Implementations. Each takes validated inputs (slope float32, state float32 or None).
# --------------------------------------------------------------------------------------


def lightning_decode_step(q_BHD: Array, k_BHD: Array, v_BHD: Array, slope_H: Array,
                          state_BHDD: Array) -> tuple[Array, Array]:
  """One token of lightning attention: S = exp(-s) S + k^T v, then o = q S.

  Args:
    q_BHD, k_BHD, v_BHD: [B,H,D], one float dtype.
    slope_H: [H] float; the per-step decay is exp(-slope).
    state_BHDD: [B,H,D,D] float32 state before this token.

  Returns:
    out_BHD: [B,H,D] in q's dtype.
    new_state_BHDD: [B,H,D,D] float32 state including this token.
  """
  if not (q_BHD.shape == k_BHD.shape == v_BHD.shape) or q_BHD.ndim != 3:
    raise ValueError("lightning_decode_step: q, k, v must share one [B,H,D] shape; got "
                     f"q {q_BHD.shape}, k {k_BHD.shape}, v {v_BHD.shape}.")
  b, h, d = q_BHD.shape
  if slope_H.shape != (h,):
    raise ValueError(f"lightning_decode_step: slope must have shape [H]=({h},); "
                     f"got {slope_H.shape}.")
  if state_BHDD.shape != (b, h, d, d):
    raise ValueError(f"lightning_decode_step: state must have shape [B,H,D,D]={(b, h, d, d)}; "
                     f"got {state_BHDD.shape}.")
  decay_H = jnp.exp(-slope_H.astype(_F32))
  kv_BHDJ = _matmul("bhd,bhj->bhdj", k_BHD, v_BHD)
  new_state_BHDJ = decay_H[None, :, None, None] * state_BHDD.astype(_F32) + kv_BHDJ
  out_BHJ = _matmul("bhd,bhdj->bhj", q_BHD, new_state_BHDJ.astype(q_BHD.dtype))
  return out_BHJ.astype(q_BHD.dtype), new_state_BHDJ


def _naive(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size):
  """O(T^2) reference: the whole sequence as a single span (memory B*H*T^2 floats)."""
  del block_size  # The whole sequence is one block.
  return _span_forward(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD)


def _recurrent(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size):
  """Token-by-token scan of `lightning_decode_step`; O(T D^2) work, sequential in T."""
  del block_size
  b, _, h, d = q_BTHD.shape
  if state_BHDD is None:
    state_BHDD = jnp.zeros((b, h, d, d), _F32)

  def step(state, qkv_t):
    out_BHD, state = lightning_decode_step(*qkv_t, slope_H, state)
    return state, out_BHD

  # Scan runs over the leading axis, so move T to the front and back.
  qkv_TBHD = tuple(jnp.moveaxis(x, 1, 0) for x in (q_BTHD, k_BTHD, v_BTHD))
  final_state, out_TBHD = lax.scan(step, state_BHDD, qkv_TBHD)
  return jnp.moveaxis(out_TBHD, 0, 1), final_state


def _chunked(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size):
  """Scan over full blocks of C tokens carrying the fp32 state, then one short tail block.

  The tail (T mod C tokens) is its own span rather than padding: a padded block would
  decay the state by exp(-s C) instead of exp(-s m) and the padded positions would leak into
  the final state.
  """
  b, t, h, d = q_BTHD.shape
  block = DEFAULT_BLOCK_SIZE if block_size is None else block_size
  # A block longer than T is just T; max(1, .) keeps T = 0 from dividing by zero.
  block = max(1, min(operator.index(block), t))
  num_full = t // block
  full_len = num_full * block
  if state_BHDD is None:
    state_BHDD = jnp.zeros((b, h, d, d), _F32)

  def block_step(state, qkv_block):
    out_BCHD, state = _span_forward(*qkv_block, slope_H, state)
    return state, out_BCHD

  def to_blocks(x_BTHD):
    x_BZCHD = x_BTHD[:, :full_len].reshape(b, num_full, block, h, d)
    return jnp.moveaxis(x_BZCHD, 1, 0)

  blocks = tuple(to_blocks(x) for x in (q_BTHD, k_BTHD, v_BTHD))
  state_BHDD, out_ZBCHD = lax.scan(block_step, state_BHDD, blocks)
  out_BTHD = jnp.moveaxis(out_ZBCHD, 0, 1).reshape(b, full_len, h, d)
  if full_len == t:
    return out_BTHD, state_BHDD

  tail = tuple(x[:, full_len:] for x in (q_BTHD, k_BTHD, v_BTHD))
  tail_out_BCHD, state_BHDD = _span_forward(*tail, slope_H, state_BHDD)
  return jnp.concatenate([out_BTHD, tail_out_BCHD], axis=1), state_BHDD


def _zero_state(q_BTHD: Array, state_BHDD: Optional[Array]) -> Array:
  b, _, h, d = q_BTHD.shape
  return jnp.zeros((b, h, d, d), _F32) if state_BHDD is None else state_BHDD


def _naive_segments(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT):
  """The naive form with a same-document mask; the initial state feeds the first document."""
  del block_size
  return _span_forward_segments(q_BTHD, k_BTHD, v_BTHD, slope_H,
                                _zero_state(q_BTHD, state_BHDD), run_BT, run_BT[:, 0])


def _recurrent_segments(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT):
  """Token scan that zeroes the state at each document start (before that token's update)."""
  del block_size
  starts_BT = jnp.concatenate(
      [jnp.zeros_like(run_BT[:, :1], bool), run_BT[:, 1:] != run_BT[:, :-1]], axis=1)

  def step(state, inputs):
    start_B, *qkv_t = inputs
    state = jnp.where(start_B[:, None, None, None], 0.0, state)
    out_BHD, state = lightning_decode_step(*qkv_t, slope_H, state)
    return state, out_BHD

  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (starts_BT, q_BTHD, k_BTHD, v_BTHD))
  final_state, out_TBHD = lax.scan(step, _zero_state(q_BTHD, state_BHDD), xs)
  return jnp.moveaxis(out_TBHD, 0, 1), final_state


def _chunked_segments(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT):
  """`_chunked` carrying (state, the document the state belongs to) across blocks."""
  b, t, h, d = q_BTHD.shape
  block = DEFAULT_BLOCK_SIZE if block_size is None else block_size
  block = max(1, min(operator.index(block), t))
  num_full = t // block
  full_len = num_full * block

  def block_step(carry, inputs):
    state, state_run_B = carry
    run_BC, *qkv_block = inputs
    out_BCHD, state = _span_forward_segments(*qkv_block, slope_H, state, run_BC, state_run_B)
    return (state, run_BC[:, -1]), out_BCHD

  def to_blocks(x_BT):
    x_BZC = x_BT[:, :full_len].reshape((b, num_full, block) + x_BT.shape[2:])
    return jnp.moveaxis(x_BZC, 1, 0)

  blocks = tuple(to_blocks(x) for x in (run_BT, q_BTHD, k_BTHD, v_BTHD))
  carry = (_zero_state(q_BTHD, state_BHDD), run_BT[:, 0])
  carry, out_ZBCHD = lax.scan(block_step, carry, blocks)
  out_BTHD = jnp.moveaxis(out_ZBCHD, 0, 1).reshape(b, full_len, h, d)
  if full_len == t:
    return out_BTHD, carry[0]
  tail = tuple(x[:, full_len:] for x in (q_BTHD, k_BTHD, v_BTHD))
  tail_out_BCHD, state_BHDD = _span_forward_segments(*tail, slope_H, carry[0],
                                                     run_BT[:, full_len:], carry[1])
  return jnp.concatenate([out_BTHD, tail_out_BCHD], axis=1), state_BHDD


# Implementations that accept packed documents (a trailing `run_BT` argument). Kernels
# without segment support are not listed; "auto" then falls back to "chunked".
SEGMENT_IMPLEMENTATIONS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "naive": _naive_segments,
    "recurrent": _recurrent_segments,
    "chunked": _chunked_segments,
}


# Name -> implementation. Kernel modules add entries (e.g. "pallas_tpu") at import time.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[Array, Array]]] = {
    "naive": _naive,
    "recurrent": _recurrent,
    "chunked": _chunked,
}


# Kernels that "auto" may pick, in order of preference: (name, supported) where
# supported(q, k, v, slope, initial_state, block_size) says whether that kernel should run
# these inputs on this backend. Kernel modules append entries; "chunked" is the fallback.
AUTO_CANDIDATES: list[tuple[str, Callable[..., bool]]] = []


def _resolve_impl(impl: str, inputs: tuple = ()) -> str:
  """Maps "auto" to the best available implementation for this backend (and `inputs`)."""
  if impl == "auto":
    for name, supported in AUTO_CANDIDATES:
      if inputs and name in IMPLEMENTATIONS and supported(*inputs):
        return name
    return "chunked"
  if impl not in IMPLEMENTATIONS:
    valid = ", ".join(repr(name) for name in ["auto", *sorted(IMPLEMENTATIONS)])
    raise ValueError(f"lightning_attention: unknown impl={impl!r}; valid values: {valid}.")
  return impl


def _is_int(value) -> bool:
  try:
    operator.index(value)
  except TypeError:
    return False
  return not isinstance(value, bool)


def _validate(q, k, v, slope, initial_state, block_size) -> None:
  """Raises ValueError, naming the argument and shapes, for any malformed input."""
  if q.ndim != 4:
    raise ValueError(f"lightning_attention: q must have rank 4 [B,T,H,D]; got shape {q.shape}.")
  if not (q.shape == k.shape == v.shape):
    raise ValueError("lightning_attention: q, k, v must share one [B,T,H,D] shape; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}.")
  if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError("lightning_attention: q, k, v must share one float dtype; got "
                     f"q {q.dtype}, k {k.dtype}, v {v.dtype}.")
  b, _, h, d = q.shape
  if slope.shape != (h,):
    raise ValueError(f"lightning_attention: slope must have shape [H]=({h},) for q of shape "
                     f"{q.shape}; got {slope.shape}.")
  if initial_state is not None and initial_state.shape != (b, h, d, d):
    raise ValueError("lightning_attention: initial_state must have shape "
                     f"[B,H,D,D]={(b, h, d, d)} for q of shape {q.shape}; "
                     f"got {initial_state.shape}.")
  if block_size is not None and (not _is_int(block_size) or block_size < 1):
    raise ValueError(f"lightning_attention: block_size must be a positive int; got {block_size!r}.")


def lightning_attention(q: Array, k: Array, v: Array, slope: Array, *,
                        initial_state: Optional[Array] = None, impl: str = "auto",
                        block_size: Optional[int] = None,
                        segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
  """Causal linear attention with per-head decay exp(-slope), docs/MODEL.md §6.3.

  o_t = q_t S_t with S_t = exp(-slope) S_{t-1} + k_t^T v_t and S_{-1} = initial_state.
  Differentiable with `jax.grad` in q, k, v, slope and initial_state, and jit-able with `impl` and
  `block_size` static.

  Args:
    q, k, v: [B,T,H,D], one float dtype (float32 or bfloat16).
    slope: [H] float; decay rates (ALiBi slope times the layer factor), ~1e-6 to 20.
    initial_state: [B,H,D,D] float32 state from a previous call, or None for zeros.
    impl: "auto", "naive", "recurrent", "chunked" or a registered kernel name.
    block_size: block length C for "chunked" (default 256); any C >= 1, T need not be a
      multiple of it. Ignored by "naive" and "recurrent".
    segment_ids: optional [B,T] int ids of packed documents. A document is a maximal run of
      equal ids; the state resets at each document start, so a token attends only within
      its document. initial_state belongs to the first document of each row, and
      final_state is the last document's state. None (default) is one document per row.

  Returns:
    out: [B,T,H,D] in q.dtype.
    final_state: [B,H,D,D] float32, the state after the last token (feed it back as
      initial_state to continue the sequence).
  """
  name = _resolve_impl(impl, (q, k, v, slope, initial_state, block_size))
  slope = jnp.asarray(slope)
  _validate(q, k, v, slope, initial_state, block_size)
  slope_H = slope.astype(_F32)
  state_BHDD = None if initial_state is None else jnp.asarray(initial_state).astype(_F32)
  if segment_ids is None:
    return IMPLEMENTATIONS[name](q, k, v, slope_H, state_BHDD, block_size)
  segment_ids = jnp.asarray(segment_ids)
  if segment_ids.shape != q.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
    raise ValueError(f"lightning_attention: segment_ids must be int [B,T]={q.shape[:2]}; got "
                     f"{segment_ids.dtype}{list(segment_ids.shape)}.")
  if name not in SEGMENT_IMPLEMENTATIONS:
    if impl != "auto":
      raise ValueError(f"lightning_attention: impl={impl!r} does not support segment_ids; "
                       f"use one of {sorted(SEGMENT_IMPLEMENTATIONS)}.")
    name = "chunked"
  return SEGMENT_IMPLEMENTATIONS[name](q, k, v, slope_H, state_BHDD, block_size,
                                       _document_runs(segment_ids))
