"""Chunked lightning attention for GPUs with Pallas-Triton: a fused forward and a 3-kernel
backward, no per-chunk states in HBM.

The math is lightning_tpu.py's (its docstring derives it), with the chunk decays, document
masks and slope-gradient identity of lightning_chunk.py. The memory plan is fla's
*fused_chunk* structure (WORKSPACE_NOTES.md, "Issue 12"): one program per (b, h, value or key
column block) loops over all chunks with its fp32 state slice in registers.

  `forward`, grid (B, H, D/BV): program j owns o[:, jBV:(j+1)BV] and S[:, jBV:(j+1)BV],
    chunks 0 .. Z-1:  o = ((Q K^T) * Diag) V_j + (Q * qdecay) S_j,
                      S_j <- span S_j + (K * kdecay)^T V_j
  `backward`, three kernels:
    dq, grid (B, H, D/BK), chunks 0 .. Z-1, carries S[kb, :] (recomputed from the initial
      state): dq_kb = ((dO V^T) * Diag) K_kb + (dO S[kb,:]^T) * qdecay, plus the q-term
    dk, grid (B, H, D/BK), chunks Z-1 .. 0, carries dS[kb, :] (from dS_final):
      dk_kb = ((dO V^T) * Diag)^T Q_kb + (V dS[kb,:]^T) * kdecay, plus the k-term
    dv, grid (B, H, D/BV), chunks Z-1 .. 0, carries dS[:, vb]:
      dv_vb = ((Q K^T) * Diag)^T dO_vb + (K * kdecay) dS[:, vb]; the last carry is
      d_initial_state[:, vb]
  HBM traffic: q, k, v, o forward; about 14 [B,T,H,D] arrays backward (WORKSPACE_NOTES.md).

Triton constraints honoured here: every array in the kernel has a power-of-two size, so the
chunk C is a power of two >= 16 (`BlockSizes.chunk_for`), the column split is a power of two
and T is zero-padded to a multiple of C (the sequence block itself may be any length).
Matmuls are `lax.dot_general` (never `pl.dot`) with operands in the input dtype (bf16 on the
tensor cores) and float32 accumulation; interpret mode upcasts operands to float32 (XLA:CPU
lacks some bf16 x bf16 -> f32 dots; a bf16 product is exact in float32).

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C chunk length,
Z chunks; J the value-side head dim where two head dims meet.
"""
import dataclasses
import functools
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from pallas_kernels.lightning_chunk import (GPU_PLATFORMS, SUPPORTED_DTYPES,
                                            SUPPORTED_HEAD_DIMS, Geometry, chunk_decays,
                                            next_power_of_two, pad_doc_starts, slope_grad,
                                            target_platform, weighted_rowdot)

Array = jax.Array
_F32 = jnp.float32
__all__ = ["BlockSizes", "SUPPORTED_DTYPES", "SUPPORTED_HEAD_DIMS", "backward", "forward",
           "check_block_sizes"]

# `interpret` argument: None = Triton when the trace targets a GPU, interpret mode
# elsewhere; False = always Triton; True = always interpret mode.
Interpret = Optional[bool]


def _is_pow2(x: int) -> bool:
  return x >= 1 and x & (x - 1) == 0


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling and Triton launch parameters.

  chunk: chunk length C, a power of two >= 16 (Triton needs power-of-two arrays); capped at
    T rounded up to a power of two. 64 (fla's BT) keeps every sweep config within an H100's
    shared memory (WORKSPACE_NOTES.md, "Issue 12").
  split: column block BK = BV of the state a program owns (D/split programs per head);
    clipped to D.
  num_warps, num_stages: `pltriton.CompilerParams`; num_stages software-pipelines the chunk
    loop.
  """
  chunk: int = 64
  split: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def with_chunk(self, chunk: int) -> "BlockSizes":
    return dataclasses.replace(self, chunk=chunk)

  def chunk_for(self, seq_len: int) -> int:
    return min(self.chunk, max(16, next_power_of_two(max(seq_len, 1))))

  def split_for(self, head_dim: int) -> int:
    return min(self.split, head_dim)


def check_block_sizes(fn: str, block_sizes: BlockSizes) -> None:
  """ValueError naming the field unless chunk and split are powers of two >= 16."""
  for field in ("chunk", "split"):
    value = getattr(block_sizes, field)
    if not isinstance(value, int) or value < 16 or not _is_pow2(value):
      raise ValueError(f"{fn}: block_sizes.{field} must be a power of two >= 16 (Triton "
                       f"needs power-of-two arrays); got {value!r}.")
  for field in ("num_warps", "num_stages"):
    value = getattr(block_sizes, field)
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{fn}: block_sizes.{field} must be a positive int; got {value!r}.")


# --------------------------------------------------------------------------------------
# In-kernel helpers. Values are 2-D: rows are chunk positions, columns head dims.
# --------------------------------------------------------------------------------------


def _dot(a: Array, b: Array, *, ta: bool = False, tb: bool = False, upcast: bool) -> Array:
  """a @ b with either operand transposed, float32 accumulation (tt.trans + tt.dot)."""
  if upcast:
    a, b = a.astype(_F32), b.astype(_F32)
  dims = (((0 if ta else 1,), (1 if tb else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=_F32)


def _rows(n, chunk):
  return pl.ds(pl.multiple_of(n * chunk, chunk), chunk)


def _load(ref, n, chunk, valid):
  """A chunk's [C, width] rows, zeroed past the sequence end."""
  x = ref[_rows(n, chunk), :]
  return jnp.where(valid, x, jnp.zeros_like(x))


def _decays(slope_ref, doc_ref, n, *, seq_len, chunk):
  doc = None if doc_ref is None else doc_ref[_rows(n, chunk), :]
  return chunk_decays(slope_ref[0], n, seq_len=seq_len, chunk=chunk, doc_start=doc)


# --------------------------------------------------------------------------------------
# Kernels. q/k/v/dO refs are whole [T_pad, D] or column blocks [T_pad, BK|BV] of one (b, h).
# --------------------------------------------------------------------------------------


def _forward_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, sfin_ref, *,
                    geo: Geometry, upcast: bool):
  c, dtype = geo.chunk, q_ref.dtype

  def body(n, state):
    dec = _decays(slope_ref, doc_ref, n, seq_len=geo.seq_len, chunk=c)
    q, k, v = (_load(r, n, c, dec.valid) for r in (q_ref, k_ref, v_ref))
    scores = _dot(q, k, tb=True, upcast=upcast) * dec.diag
    out = _dot(scores.astype(dtype), v, upcast=upcast)
    q_scaled = (q.astype(_F32) * dec.q_decay).astype(dtype)
    out = out + _dot(q_scaled, state.astype(dtype), upcast=upcast)
    o_ref[_rows(n, c), :] = out.astype(o_ref.dtype)
    k_scaled = (k.astype(_F32) * dec.k_decay).astype(dtype)
    return dec.span * state + _dot(k_scaled, v, ta=True, upcast=upcast)

  sfin_ref[...] = lax.fori_loop(0, geo.num_chunks, body, s0_ref[...].astype(_F32))


def _dq_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, s0_ref, dq_ref, qterm_ref, *,
               geo: Geometry, upcast: bool):
  c, dtype = geo.chunk, q_ref.dtype

  def body(n, carry):
    state, qterm = carry  # state: rows kb of S, [BK, D]
    dec = _decays(slope_ref, doc_ref, n, seq_len=geo.seq_len, chunk=c)
    q, k, v, do = (_load(r, n, c, dec.valid) for r in (q_ref, k_ref, v_ref, do_ref))
    d_scores = _dot(do, v, tb=True, upcast=upcast) * dec.diag
    dq = _dot(d_scores.astype(dtype), k, upcast=upcast)
    dq = dq + _dot(do, state.astype(dtype), tb=True, upcast=upcast) * dec.q_decay
    dq_ref[_rows(n, c), :] = dq.astype(dq_ref.dtype)
    qterm = qterm + weighted_rowdot(q.astype(_F32), dq, dec.pos1)
    # The forward's recurrence for rows kb, recomputed (lightning_tpu.py: recompute, not store).
    k_scaled = (k.astype(_F32) * dec.k_decay).astype(dtype)
    return dec.span * state + _dot(k_scaled, v, ta=True, upcast=upcast), qterm

  init = (s0_ref[...].astype(_F32), jnp.zeros((1, 1), _F32))
  _, qterm = lax.fori_loop(0, geo.num_chunks, body, init)
  qterm_ref[...] = qterm


def _dk_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, dsfin_ref, dk_ref, kterm_ref, *,
               geo: Geometry, upcast: bool):
  c, dtype = geo.chunk, q_ref.dtype

  def body(step, carry):
    dstate, kterm = carry  # rows kb of dS, [BK, D]
    n = geo.num_chunks - 1 - step
    dec = _decays(slope_ref, doc_ref, n, seq_len=geo.seq_len, chunk=c)
    q, k, v, do = (_load(r, n, c, dec.valid) for r in (q_ref, k_ref, v_ref, do_ref))
    d_scores = _dot(do, v, tb=True, upcast=upcast) * dec.diag
    dk = _dot(d_scores.astype(dtype), q, ta=True, upcast=upcast)
    dk = dk + _dot(v, dstate.astype(dtype), tb=True, upcast=upcast) * dec.k_decay
    dk_ref[_rows(n, c), :] = dk.astype(dk_ref.dtype)
    kterm = kterm + weighted_rowdot(k.astype(_F32), dk, dec.pos1)
    q_scaled = (q.astype(_F32) * dec.q_decay).astype(dtype)
    return dec.span * dstate + _dot(q_scaled, do, ta=True, upcast=upcast), kterm

  init = (dsfin_ref[...].astype(_F32), jnp.zeros((1, 1), _F32))
  _, kterm = lax.fori_loop(0, geo.num_chunks, body, init)
  kterm_ref[...] = kterm


def _dv_kernel(slope_ref, doc_ref, q_ref, k_ref, do_ref, dsfin_ref, dv_ref, ds0_ref, *,
               geo: Geometry, upcast: bool):
  c, dtype = geo.chunk, q_ref.dtype

  def body(step, dstate):  # columns vb of dS, [D, BV]
    n = geo.num_chunks - 1 - step
    dec = _decays(slope_ref, doc_ref, n, seq_len=geo.seq_len, chunk=c)
    q, k, do = (_load(r, n, c, dec.valid) for r in (q_ref, k_ref, do_ref))
    scores = _dot(q, k, tb=True, upcast=upcast) * dec.diag
    dv = _dot(scores.astype(dtype), do, ta=True, upcast=upcast)
    k_scaled = (k.astype(_F32) * dec.k_decay).astype(dtype)
    dv = dv + _dot(k_scaled, dstate.astype(dtype), upcast=upcast)
    dv_ref[_rows(n, c), :] = dv.astype(dv_ref.dtype)
    q_scaled = (q.astype(_F32) * dec.q_decay).astype(dtype)
    return dec.span * dstate + _dot(q_scaled, do, ta=True, upcast=upcast)

  ds0_ref[...] = lax.fori_loop(0, geo.num_chunks, body, dsfin_ref[...].astype(_F32))


# --------------------------------------------------------------------------------------
# Launch helpers.
# --------------------------------------------------------------------------------------


def _resolve_interpret(interpret: Interpret) -> bool:
  if interpret is None:
    return target_platform() not in GPU_PLATFORMS
  return bool(interpret)


def _geometry(q_BTHD: Array, block_sizes: BlockSizes) -> Geometry:
  b, t, h, d = q_BTHD.shape
  return Geometry(b, t, h, d, block_sizes.chunk_for(t))


def _pad(x_BTHD: Array, geo: Geometry) -> Array:
  if geo.padded_len == geo.seq_len:
    return x_BTHD
  return jnp.pad(x_BTHD, ((0, 0), (0, geo.padded_len - geo.seq_len), (0, 0), (0, 0)))


def _whole(geo: Geometry) -> pl.BlockSpec:
  """All [T_pad, D] of one (b, h)."""
  return pl.BlockSpec((None, geo.padded_len, None, geo.head_dim), lambda b, h, j: (b, 0, h, 0))


def _cols(geo: Geometry, width: int) -> pl.BlockSpec:
  """Column block j ([T_pad, width]) of one (b, h)."""
  return pl.BlockSpec((None, geo.padded_len, None, width), lambda b, h, j: (b, 0, h, j))


def _state_cols(geo: Geometry, width: int) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, geo.head_dim, width), lambda b, h, j: (b, h, 0, j))


def _state_rows(geo: Geometry, width: int) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, width, geo.head_dim), lambda b, h, j: (b, h, j, 0))


def _term_spec() -> pl.BlockSpec:
  return pl.BlockSpec((None, None, None, 1, 1), lambda b, h, j: (b, h, j, 0, 0))


def _slope_spec() -> pl.BlockSpec:
  return pl.BlockSpec((1,), lambda b, h, j: (h,))


def _doc_inputs(doc_start_BT, geo: Geometry):
  """(in_specs, args) of the optional [B,T_pad,1] document starts (whole sequence)."""
  if doc_start_BT is None:
    return [], []
  docs = pad_doc_starts(doc_start_BT.astype(jnp.int32), geo.padded_len)[:, :, None]
  return [pl.BlockSpec((None, geo.padded_len, 1), lambda b, h, j: (b, 0, 0))], [docs]


def _call(kernel, geo: Geometry, block_sizes: BlockSizes, width: int, in_specs, out_specs,
          out_shape, interpret: bool, name: str, segmented: bool):
  body = functools.partial(kernel, geo=geo, upcast=interpret)
  if not segmented:
    body = functools.partial(lambda k, slope_ref, *refs: k(slope_ref, None, *refs), body)
  return pl.pallas_call(
      body,
      grid=(geo.batch, geo.heads, geo.head_dim // width),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      # Always explicit: without Triton params jax 0.10 routes a GPU pallas_call to Mosaic GPU.
      compiler_params=pltriton.CompilerParams(num_warps=block_sizes.num_warps,
                                              num_stages=block_sizes.num_stages),
      interpret=interpret,
      name=name,
  )


def _seq_shape(geo: Geometry, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((geo.batch, geo.padded_len, geo.heads, geo.head_dim), dtype)


def _state_shape(geo: Geometry) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, geo.head_dim, geo.head_dim), _F32)


def _term_shape(geo: Geometry, width: int) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, geo.head_dim // width, 1, 1), _F32)


# --------------------------------------------------------------------------------------
# Public kernel entry points (validated inputs; see lightning_triton_ops for the custom_vjp).
# --------------------------------------------------------------------------------------


def forward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
            doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention forward; the contract of `lightning_tpu.forward`."""
  geo = _geometry(q_BTHD, block_sizes)
  interp = _resolve_interpret(interpret)
  bv = block_sizes.split_for(geo.head_dim)
  doc_specs, doc_args = _doc_inputs(doc_start_BT, geo)
  call = _call(
      _forward_kernel, geo, block_sizes, bv,
      in_specs=[_slope_spec(), *doc_specs, _whole(geo), _whole(geo), _cols(geo, bv),
                _state_cols(geo, bv)],
      out_specs=[_cols(geo, bv), _state_cols(geo, bv)],
      out_shape=[_seq_shape(geo, q_BTHD.dtype), _state_shape(geo)],
      interpret=interp, name="lightning_fwd_triton", segmented=bool(doc_specs))
  q, k, v = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD))
  out, final_state = call(slope_H, *doc_args, q, k, v, state_BHDD)
  return out[:, :geo.seq_len], final_state


def backward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
             final_state_BHDD: Array, d_out_BTHD: Array, d_final_state_BHDD: Array,
             doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
             interpret: Interpret = None) -> tuple[Array, Array, Array, Array, Array]:
  """Gradients of <out, d_out> + <final_state, d_final_state>; the contract of
  `lightning_tpu.backward` (dq, dk, dv in q's dtype, dslope [H] and d_state float32)."""
  geo = _geometry(q_BTHD, block_sizes)
  interp = _resolve_interpret(interpret)
  dtype = q_BTHD.dtype
  bk = bv = block_sizes.split_for(geo.head_dim)
  doc_specs, doc_args = _doc_inputs(doc_start_BT, geo)
  seg = bool(doc_specs)
  q, k, v, do = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD, d_out_BTHD))
  head = [_slope_spec(), *doc_specs]

  dq_call = _call(
      _dq_kernel, geo, block_sizes, bk,
      in_specs=[*head, _cols(geo, bk), _cols(geo, bk), _whole(geo), _whole(geo),
                _state_rows(geo, bk)],
      out_specs=[_cols(geo, bk), _term_spec()],
      out_shape=[_seq_shape(geo, dtype), _term_shape(geo, bk)],
      interpret=interp, name="lightning_bwd_dq_triton", segmented=seg)
  dq, q_term = dq_call(slope_H, *doc_args, q, k, v, do, state_BHDD)

  dk_call = _call(
      _dk_kernel, geo, block_sizes, bk,
      in_specs=[*head, _cols(geo, bk), _cols(geo, bk), _whole(geo), _whole(geo),
                _state_rows(geo, bk)],
      out_specs=[_cols(geo, bk), _term_spec()],
      out_shape=[_seq_shape(geo, dtype), _term_shape(geo, bk)],
      interpret=interp, name="lightning_bwd_dk_triton", segmented=seg)
  dk, k_term = dk_call(slope_H, *doc_args, q, k, v, do, d_final_state_BHDD)

  dv_call = _call(
      _dv_kernel, geo, block_sizes, bv,
      in_specs=[*head, _whole(geo), _whole(geo), _cols(geo, bv), _state_cols(geo, bv)],
      out_specs=[_cols(geo, bv), _state_cols(geo, bv)],
      out_shape=[_seq_shape(geo, dtype), _state_shape(geo)],
      interpret=interp, name="lightning_bwd_dv_triton", segmented=seg)
  dv, d_state = dv_call(slope_H, *doc_args, q, k, do, d_final_state_BHDD)

  d_slope_H = slope_grad(jnp.sum(q_term, axis=(2, 3, 4)), jnp.sum(k_term, axis=(2, 3, 4)),
                         final_state_BHDD, d_final_state_BHDD, geo.seq_len)
  t = geo.seq_len
  return dq[:, :t], dk[:, :t], dv[:, :t], d_slope_H, d_state
