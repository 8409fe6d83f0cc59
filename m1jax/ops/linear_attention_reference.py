"""Lightning attention references: the naive O(T^2) span form, the token recurrence and the
decode step, each with optional packed documents (docs/MODEL.md §6.3).

Math, per batch row and head, with decay lambda = exp(-slope):

  S_t = lambda * S_{t-1} + k_t^T v_t        # [D, D] state, includes the current token
  o_t = q_t S_t
      = sum_{j<=t} lambda^(t-j) (q_t . k_j) v_j  +  lambda^(t+1) q_t S_{-1}

Packed documents: `document_runs` numbers the maximal runs of equal segment ids; the state
resets at each run start, initial_state feeds the first run and the final state is the last
run's. `run_BT=None` is one document per row and computes exactly the unsegmented form.

Precision: decay factors and the state are float32. Every matmul takes its operands in the
input dtype (bf16 stays bf16 on the MXU) and accumulates in float32 through
`preferred_element_type`; that matches the remote code, which also reads the fp32 state
through `kv.to(q.dtype)`. Outputs are cast back to q.dtype. When the program is lowered for
a CPU the operands are upcast to float32 to dodge an XLA:CPU gap (`_matmul`); the numbers are
unchanged.

Numerical safety: slopes range over ~1e-6..20 and spans over 256 positions, so exp(+s*i)
factorisations overflow. Every decay here is exp(-s * n) with n >= 0, and masked entries are
zeroed with `where` after clamping the exponent, so neither the forward nor the gradient
meets inf * 0.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C block length,
Z blocks; S a second (key-side) time axis, J the value-side head dim of a [D,D] state.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.lightning_chunk import target_platform

Array = jax.Array
_F32 = jnp.float32


def _matmul(subscripts: str, a: Array, b: Array) -> Array:
  """einsum with float32 accumulation; operands stay in their own dtype off CPU.

  XLA:CPU cannot run every bf16 x bf16 -> f32 dot: a dot that falls back to its generic
  DotThunk fails at run time with "Unsupported element type ... BF16 x BF16 = F32"
  (seen with jax 0.10.2 for 'bthd,bhdj->bthj'). When the trace targets a CPU the operands
  are upcast instead; a bf16 x bf16 product is exact in float32, so this gives the same
  numbers as a bf16 MXU with float32 accumulation, up to summation order. The platform is
  the LOWERING target (`target_platform`), not `jax.default_backend()`: a TPU program
  compiled ahead of time on a CPU host keeps its bf16 operands.
  """
  if target_platform() == "cpu":
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


def _scale_rows(x_BTHD: Array, decay_BTH: Array) -> Array:
  """x * decay broadcast over D, computed in fp32 and returned in x's dtype."""
  scaled = x_BTHD.astype(_F32) * decay_BTH[..., None]
  return scaled.astype(x_BTHD.dtype)


def document_runs(segment_ids_BT: Array) -> Array:
  """Document index per token: +1 wherever the segment id changes, 0 for the first run.

  A document is a maximal run of equal ids, so ids may repeat across non-adjacent documents
  (e.g. padding 0 between rows) without ever joining them.
  """
  changes_BT = segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]
  return jnp.concatenate([jnp.zeros_like(segment_ids_BT[:, :1], jnp.int32),
                          jnp.cumsum(changes_BT.astype(jnp.int32), axis=1)], axis=1)


def span_forward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array,
                 state_BHDD: Optional[Array], run_BT: Optional[Array] = None,
                 state_run_B: Optional[Array] = None) -> tuple[Array, Array]:
  """Exact lightning attention over one span of T tokens, starting from `state_BHDD`.

  This is the chunked update of docs/MODEL.md §6.4 for one block of length m = T:
    O     = ((Q K^T) * Diag) V + (Q * qdecay) S_prev,   qdecay[i] = exp(-s (i+1))
    S_new = exp(-s m) S_prev + (K * kdecay)^T V,        kdecay[j] = exp(-s (m-1-j))
  Applied to the whole sequence it is the naive O(T^2) form; applied per block it is the
  body of the chunked scan.

  Packed documents (run_BT given, with state_run_B the document the incoming state belongs
  to): Diag keeps only same-document pairs, a token reads the carried state only while it is
  still in that document, and the new state keeps only the span's last document (plus the
  carried state if that document started before the span).

  Args:
    q_BTHD, k_BTHD, v_BTHD: [B,T,H,D], one float dtype.
    slope_H: [H] float32.
    state_BHDD: [B,H,D,D] float32, or None for a zero state (skips the state read).
    run_BT: None, or [B,T] int32 non-decreasing document indices (`document_runs`).
    state_run_B: [B] int32, required with run_BT.

  Returns:
    out_BTHD: [B,T,H,D] in q's dtype.
    new_state_BHDD: [B,H,D,D] float32, the state after the last token of the span.
  """
  dtype = q_BTHD.dtype
  b, length, h, _ = q_BTHD.shape
  pos_T = jnp.arange(length, dtype=_F32)

  decay_HTS = _causal_decay(slope_H, length)
  scores_BHTS = _matmul("bthd,bshd->bhts", q_BTHD, k_BTHD)
  scores_BHTS = scores_BHTS * decay_HTS[None]
  if run_BT is not None:
    same_BTS = run_BT[:, :, None] == run_BT[:, None, :]
    scores_BHTS = jnp.where(same_BTS[:, None], scores_BHTS, 0.0)
  out_BTHJ = _matmul("bhts,bshj->bthj", scores_BHTS.astype(dtype), v_BTHD)

  # Token j's k^T v decays once per later token of the span before the span ends.
  k_decay_BTH = jnp.broadcast_to(
      jnp.exp(-slope_H[:, None] * (length - 1 - pos_T)[None, :]).T[None], (b, length, h))
  if run_BT is not None:
    in_last_BT = run_BT == run_BT[:, -1:]
    k_decay_BTH = jnp.where(in_last_BT[:, :, None], k_decay_BTH, 0.0)
  kv_BHDJ = _matmul("bthd,bthj->bhdj", _scale_rows(k_BTHD, k_decay_BTH), v_BTHD)
  if state_BHDD is None:
    return out_BTHJ.astype(dtype), kv_BHDJ

  # 1-based: by token i the carried state has decayed i+1 times (S includes token i).
  q_decay_BTH = jnp.broadcast_to(
      jnp.exp(-slope_H[:, None] * (pos_T + 1.0)[None, :]).T[None], (b, length, h))
  span_decay_BH = jnp.broadcast_to(jnp.exp(-slope_H * length)[None], (b, h))
  if run_BT is not None:
    reads_state_BT = run_BT == state_run_B[:, None]
    q_decay_BTH = jnp.where(reads_state_BT[:, :, None], q_decay_BTH, 0.0)
    keeps_state_B = run_BT[:, -1] == state_run_B
    span_decay_BH = jnp.where(keeps_state_B[:, None], span_decay_BH, 0.0)
  out_BTHJ = out_BTHJ + _matmul("bthd,bhdj->bthj", _scale_rows(q_BTHD, q_decay_BTH),
                                state_BHDD.astype(dtype))
  new_state_BHDJ = span_decay_BH[:, :, None, None] * state_BHDD + kv_BHDJ
  return out_BTHJ.astype(dtype), new_state_BHDJ


def zero_state(q_BTHD: Array, state_BHDD: Optional[Array]) -> Array:
  b, _, h, d = q_BTHD.shape
  return jnp.zeros((b, h, d, d), _F32) if state_BHDD is None else state_BHDD


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


def naive(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT=None):
  """O(T^2) reference: the whole sequence as a single span (memory B*H*T^2 floats); with
  documents, a same-document mask, the initial state feeding the first document."""
  del block_size  # The whole sequence is one block.
  if run_BT is None:
    return span_forward(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD)
  return span_forward(q_BTHD, k_BTHD, v_BTHD, slope_H, zero_state(q_BTHD, state_BHDD),
                      run_BT, run_BT[:, 0])


def recurrent(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT=None):
  """Token-by-token scan of `lightning_decode_step`; O(T D^2) work, sequential in T. With
  documents the state is zeroed at each document start (before that token's update)."""
  del block_size
  if run_BT is None:
    starts_BT = jnp.zeros(q_BTHD.shape[:2], bool)
  else:
    starts_BT = jnp.concatenate(
        [jnp.zeros_like(run_BT[:, :1], bool), run_BT[:, 1:] != run_BT[:, :-1]], axis=1)

  def step(state, inputs):
    start_B, *qkv_t = inputs
    if run_BT is not None:
      state = jnp.where(start_B[:, None, None, None], 0.0, state)
    out_BHD, state = lightning_decode_step(*qkv_t, slope_H, state)
    return state, out_BHD

  # Scan runs over the leading axis, so move T to the front and back.
  xs = tuple(jnp.moveaxis(x, 1, 0) for x in (starts_BT, q_BTHD, k_BTHD, v_BTHD))
  final_state, out_TBHD = lax.scan(step, zero_state(q_BTHD, state_BHDD), xs)
  return jnp.moveaxis(out_TBHD, 0, 1), final_state
