"""Chunked lightning attention for GPUs (Pallas / Mosaic GPU): forward and backward kernels.

The math is the TPU kernel's (pallas_kernels/lightning_tpu.py, whose docstring derives it):
the same chunk decays, document masks (lightning_chunk.chunk_decays' semantics, rebuilt at
full shape here for Mosaic's layouts: `_factors`), tail masking, recompute-not-store backward
and slope-gradient identity (lightning_chunk.slope_grad). The memory movement differs:

  One Mosaic GPU program per (b, h) (`plgpu.kernel`, grid (B, H)). Inputs stay in GMEM in
  their [B,T,H,D] layout (T padded to a multiple of C by the wrapper); each chunk's
  [C,D] slice `x.at[b, pl.ds(n C, C), h]` is copied GMEM -> SMEM (a TMA on Hopper; the same
  slicing as jax's attention_mgpu.py), outputs are staged in SMEM and copied back. The
  float32 [D,D] state (or dS in the reverse pass) lives in SMEM for the whole loop over
  chunks: 64 KiB at D = 128, too big to hold in one warpgroup's registers next to the
  [C,C] scores. SMEM at C = 64, D = 128, bf16 (Mosaic's report): forward 185 KiB, dq 204,
  dkdv 212 of 227.
    `forward`:           o, final_state                    chunks 0 .. Z-1
    `backward` (dq):     dq, q-term of dslope, S recomputed   chunks 0 .. Z-1
    `backward` (dk, dv): dk, dv, d_initial_state, k-term      chunks Z-1 .. 0

Hopper codegen (jax 0.11.2, Warpgroup lowering semantics, one warpgroup per program):
  * Every product is `plgpu.wgmma` on SMEM operands (`_mm`): the chunk inputs straight from
    their TMA buffers, computed operands (decayed P, the decay-scaled q or k, the bf16 copy
    of the fp32 state) staged in SMEM with `commit_smem`; transposes are `ref.transpose`
    views. Eleven forms: fwd Q K^T, P V + (Q qd) S, (K kd)^T V; dq dO V^T, dP K, dO S^T;
    dkdv Q K^T, dO V^T, dP^T Q, V dS^T, P^T dO + (K kd) dS, (Q qd)^T dO.
  * Decay factors and document masks are built at full [C,C]/[C,D] shape in the WGMMA
    layout (`_factors`): Mosaic's layout inference finds no solution for [C,1] column
    factors. Per-row document starts are loaded in the WGMMA row layout and broadcast.
  * The [D,D] state recurrences run in row blocks of 64 (a [64,D] accumulator).
  * Compiled: bf16 only (float32 wgmma is tf32 and rejects transposed operands), C a
    multiple of 64. Interpret mode takes float32 too and any C that is a multiple of 16.
  * Copies are synchronous (issue, wait, compute). On hardware the next chunk's TMA should
    be issued before the current chunk's wgmmas (two SMEM slots per input); not done.
  Lowering for cuda and the deviceless H100 compile run on CPU
  (tests/pallas_kernels/test_lightning_gpu_lowering.py); the kernel has never run on a GPU.
Interpret mode (jax's GPU interpreter) runs the same wgmmas on the same dtype-rounded SMEM
operands; tests/pallas_kernels/test_lightning_gpu.py checks it against chunked.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C chunk length,
Z chunks.
"""
import dataclasses
import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.lightning_chunk import (GPU_PLATFORMS, SUPPORTED_DTYPES,
                                            SUPPORTED_HEAD_DIMS, Geometry, pad_doc_starts,
                                            round_up, slope_grad, target_platform)

Array = jax.Array
_F32 = jnp.float32

# Per-(b,h) float32 slope-gradient terms are written as one 128-wide row (a 512-byte TMA).
_ACC_WIDTH = 128


def _interpret_params_type():
  """Mosaic GPU interpret-mode parameters. jax 0.10.2 keeps the class private; newer jax
  may export it from `plgpu` (checked first so the GPU machine's jax needs no change)."""
  public = getattr(plgpu, "InterpretParams", None)
  if public is not None:
    return public
  from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # pylint: disable=g-import-not-at-top
  return InterpretGPUParams


InterpretGPUParams = _interpret_params_type()

# `interpret` argument: None = Mosaic GPU when the trace targets a GPU, interpret mode
# elsewhere; False = always Mosaic GPU; an InterpretGPUParams = always interpret mode.
Interpret = Any
# NaN-filled uninitialised memory: a read of a never-written SMEM/GMEM buffer poisons the
# result instead of passing silently.
DEFAULT_INTERPRET_PARAMS = InterpretGPUParams(uninitialized_memory="nan")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of the Mosaic GPU kernels.

  block_t: chunk length C, rounded up to a multiple of 16 (interpret mode) or 64 (compiled:
    wgmma's M, and a [C,C] bf16 row of 128 bytes for the 128-byte swizzle) and capped at T
    rounded up to that multiple. 64 keeps the dkdv kernel's SMEM (module docstring) within
    Hopper's 227 KiB at D = 128. Not measured on hardware.
  """
  block_t: int = 64

  def with_chunk(self, chunk: int) -> "BlockSizes":
    return dataclasses.replace(self, block_t=chunk)

  def chunk_for(self, seq_len: int, compiled: bool = False) -> int:
    multiple = _WGMMA_M if compiled else 16
    chunk = round_up(max(int(self.block_t), 1), multiple)
    return min(chunk, round_up(max(seq_len, 1), multiple))


# --------------------------------------------------------------------------------------
# Mosaic-specific chunk factors and matmuls.
# --------------------------------------------------------------------------------------

# Register layout of a wgmma accumulator. Every factor is built at the full [C,C] or [C,D]
# shape in this layout: Mosaic's layout inference (jax 0.11.2) finds no solution for
# lightning_chunk's [C,1] column factors broadcast against wgmma results, and does for
# full-shape ones (WORKSPACE_NOTES.md, Issue 12).
_WG = plgpu.Layout.WGMMA
# wgmma's fixed M: the state recurrences run over row blocks of this height, so a [64,D]
# float32 accumulator (64 registers per thread at D = 128) is live instead of a [D,D] one.
_WGMMA_M = 64


def _iota(shape, dim):
  return plgpu.broadcasted_iota(jnp.int32, shape, dim, layout=_WG)


@dataclasses.dataclass(frozen=True)
class _Factors:
  """lightning_chunk.ChunkDecays at full shape: the same values, broadcast along columns."""
  diag: Array      # [C,C] f32
  q_decay: Array   # [C,D] f32 (row i: exp(-s (i+1)) where it reads the carry, else 0)
  k_decay: Array   # [C,D] f32
  span: Array      # []    f32
  pos1: Array      # [C,D] f32


def _factors(s, n, doc_s, geo: Geometry) -> _Factors:
  """The chunk's decays and document masks (lightning_chunk.chunk_decays' semantics;
  doc_s: the chunk's [C] int32 document starts in SMEM, or None)."""
  c, d = geo.chunk, geo.head_dim
  start = n * c
  m = jnp.minimum(geo.seq_len - start, c)  # real positions in this chunk
  row, col = _iota((c, c), 0), _iota((c, c), 1)
  causal = row >= col
  i = _iota((c, d), 0)
  valid = i < m
  keep_k = valid
  span = jnp.exp(-s * m.astype(_F32))
  q_decay = jnp.exp(-s * (i + 1).astype(_F32))
  if doc_s is not None:
    doc_start = plgpu.load(doc_s, layout=_WG.reduce(1))
    # doc starts never decrease and padded rows repeat the last real one (pad_doc_starts),
    # so the chunk's maximum is its last real row's document start.
    last_start = jnp.max(doc_start)
    causal = causal & (start + col >= lax.broadcast_in_dim(doc_start, (c, c), [0]))
    doc_start = lax.broadcast_in_dim(doc_start, (c, d), [0])
    carried_before = jnp.maximum(start, 1)  # chunk 0's first document owns the carry
    q_decay = jnp.where(doc_start < carried_before, q_decay, 0.0)
    keep_k = valid & (start + i >= last_start)
    span = jnp.where(last_start < carried_before, span, 0.0)
  gap = jnp.where(causal, row - col, 0).astype(_F32)
  diag = jnp.where(causal, jnp.exp(-s * gap), 0.0)
  k_exp = jnp.maximum(m - 1 - i, 0).astype(_F32)
  k_decay = jnp.where(keep_k, jnp.exp(-s * k_exp), 0.0)
  pos1 = jnp.where(valid, (start + i + 1).astype(_F32), 0.0)
  return _Factors(diag, q_decay, k_decay, span, pos1)


def _mm(shape, *products) -> Array:
  """sum of a @ b over `products` (SMEM refs or their `_t` views) with one float32 wgmma
  accumulator; reading it back waits for the wgmmas, so the operands' SMEM is free after."""
  def body(acc_ref):
    for a, b in products:
      plgpu.wgmma(acc_ref, a, b)
    return acc_ref[...]
  return pl.run_scoped(body, plgpu.ACC(shape, _F32))


def _t(ref):
  """The transposed view of a 2-D SMEM ref (wgmma reads it K-major or MN-major)."""
  return ref.transpose((1, 0))


def _weighted_sum(x_s, y, pos1):
  """sum_i pos1_i (x_i . y_i) (lightning_chunk.weighted_rowdot) as a scalar; rows first:
  Mosaic's layout inference has no solution for a [C,D] -> scalar reduction in one step."""
  return jnp.sum(jnp.sum(x_s[...].astype(_F32) * y * pos1, axis=1))


def _stage(smem, value):
  """Writes a register value to SMEM as a wgmma operand (rounded to the buffer's dtype, as
  the reference rounds matmul operands). Call plgpu.commit_smem() before the wgmma."""
  smem[...] = value.astype(smem.dtype)


def _stage_state(state_c_s, state_s):
  """The dtype copy of the float32 state, a [D,D] wgmma operand, row block by row block."""
  for r in range(state_s.shape[0] // _WGMMA_M):
    rows = pl.ds(r * _WGMMA_M, _WGMMA_M)
    state_c_s.at[rows][...] = state_s.at[rows][...].astype(state_c_s.dtype)


def _recur(state_s, span, lhs_s, rhs_s):
  """state = span * state + lhs^T @ rhs (lhs, rhs [C,D] in SMEM), by blocks of 64 rows."""
  for r in range(state_s.shape[0] // _WGMMA_M):
    rows = pl.ds(r * _WGMMA_M, _WGMMA_M)
    new = _mm((_WGMMA_M, state_s.shape[1]), (_t(lhs_s.at[:, rows]), rhs_s))
    state_s.at[rows][...] = span * state_s.at[rows][...] + new


# --------------------------------------------------------------------------------------
# Kernel plumbing: synchronous GMEM <-> SMEM chunk copies.
# --------------------------------------------------------------------------------------


def _copy_in(src_gmem, dst_smem, barrier):
  plgpu.copy_gmem_to_smem(src_gmem, dst_smem, barrier)
  plgpu.barrier_wait(barrier)


def _store(src_smem, dst_gmem, value):
  """Writes `value` through SMEM to GMEM and waits, so the SMEM slot is free again."""
  src_smem[...] = value.astype(src_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(src_smem, dst_gmem)
  plgpu.wait_smem_to_gmem(0)


def _seq_block(ref, b, h, n, geo: Geometry):
  return ref.at[b, pl.ds(n * geo.chunk, geo.chunk), h]


def _chunk_smem(geo: Geometry, dtype):
  return plgpu.SMEM((geo.chunk, geo.head_dim), dtype)


def _square_smem(geo: Geometry, dtype):
  return plgpu.SMEM((geo.chunk, geo.chunk), dtype)


def _doc_smem(geo: Geometry):
  return plgpu.SMEM((geo.chunk,), jnp.int32)


def _state_smem(geo: Geometry, dtype=_F32):
  return plgpu.SMEM((geo.head_dim, geo.head_dim), dtype)


def _slope(slope_gmem, slope_smem, barrier, h):
  """Head h's slope. The wrapper gives each head a row of _ACC_WIDTH copies (`_slope_rows`):
  Mosaic finds no register layout for an [H] vector at small H, while a 512-byte row copy
  and a scalar SMEM read lower at every H."""
  _copy_in(slope_gmem.at[h], slope_smem, barrier)
  return slope_smem[0]


def _slope_rows(slope_H: Array) -> Array:
  return jnp.broadcast_to(slope_H.astype(_F32)[:, None], (slope_H.shape[0], _ACC_WIDTH))


def _chunk_in(refs_smems, doc_ref, doc_s, bars, b, h, n, geo: Geometry):
  """Copies the chunk's [C,D] inputs (and document starts) to SMEM; returns doc_s or None.
  Rows past T are zeros (the wrapper pads), so no input needs masking."""
  copies = list(refs_smems)
  if doc_ref is not None:
    copies.append((doc_ref.at[b, pl.ds(n * geo.chunk, geo.chunk)], doc_s))
  for j, (ref, smem) in enumerate(copies):
    src = ref if smem is doc_s else _seq_block(ref, b, h, n, geo)
    plgpu.copy_gmem_to_smem(src, smem, bars.at[j + 1])
  for j in range(len(copies)):
    plgpu.barrier_wait(bars.at[j + 1])
  return None if doc_ref is None else doc_s


# --------------------------------------------------------------------------------------
# Kernels (one program, one warpgroup, per (b, h)).
# --------------------------------------------------------------------------------------


def _forward_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, sfin_ref,
                    slope_s, doc_s, q_s, k_s, v_s, p_s, x_s, o_s, state_c_s, state_s, bars,
                    *, geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  _copy_in(s0_ref.at[b, h], state_s, bars.at[1])

  @pl.loop(0, geo.num_chunks)
  def _(n):
    docs = _chunk_in([(q_ref, q_s), (k_ref, k_s), (v_ref, v_s)], doc_ref, doc_s, bars,
                     b, h, n, geo)
    f = _factors(s, n, docs, geo)
    scores = _mm((geo.chunk, geo.chunk), (q_s, _t(k_s)))
    _stage(p_s, scores * f.diag)
    _stage(x_s, q_s[...].astype(_F32) * f.q_decay)
    _stage_state(state_c_s, state_s)
    plgpu.commit_smem()
    out = _mm((geo.chunk, geo.head_dim), (p_s, v_s), (x_s, state_c_s))
    _store(o_s, _seq_block(o_ref, b, h, n, geo), out)

    _stage(x_s, k_s[...].astype(_F32) * f.k_decay)
    plgpu.commit_smem()
    _recur(state_s, f.span, x_s, v_s)

  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(state_s, sfin_ref.at[b, h])
  plgpu.wait_smem_to_gmem(0)


def _dq_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, s0_ref, dq_ref, qterm_ref,
               slope_s, doc_s, q_s, k_s, v_s, do_s, p_s, x_s, dq_s, state_c_s, state_s,
               acc_s, bars, *, geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  _copy_in(s0_ref.at[b, h], state_s, bars.at[1])

  def body(n, qterm):
    docs = _chunk_in([(q_ref, q_s), (k_ref, k_s), (v_ref, v_s), (do_ref, do_s)], doc_ref,
                     doc_s, bars, b, h, n, geo)
    f = _factors(s, n, docs, geo)
    d_scores = _mm((geo.chunk, geo.chunk), (do_s, _t(v_s)))
    _stage(p_s, d_scores * f.diag)
    _stage_state(state_c_s, state_s)
    plgpu.commit_smem()
    dq = (_mm((geo.chunk, geo.head_dim), (p_s, k_s))
          + _mm((geo.chunk, geo.head_dim), (do_s, _t(state_c_s))) * f.q_decay)
    _store(dq_s, _seq_block(dq_ref, b, h, n, geo), dq)
    qterm = qterm + _weighted_sum(q_s, dq, f.pos1)

    # The forward's state recurrence, recomputed (lightning_tpu.py: recompute, not store).
    _stage(x_s, k_s[...].astype(_F32) * f.k_decay)
    plgpu.commit_smem()
    _recur(state_s, f.span, x_s, v_s)
    return qterm

  qterm = lax.fori_loop(0, geo.num_chunks, body, jnp.zeros((), _F32))
  _store(acc_s, qterm_ref.at[b, h], jnp.full(acc_s.shape, qterm, _F32))


def _dkdv_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, dsfin_ref, dk_ref, dv_ref,
                 ds0_ref, kterm_ref, slope_s, doc_s, q_s, k_s, v_s, do_s, p_s, dp_s, x_s,
                 o_s, dstate_c_s, dstate_s, acc_s, bars, *, geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  _copy_in(dsfin_ref.at[b, h], dstate_s, bars.at[1])
  square, rows = (geo.chunk, geo.chunk), (geo.chunk, geo.head_dim)

  def body(step, kterm):
    n = geo.num_chunks - 1 - step  # chunks last to first, carrying dS
    docs = _chunk_in([(q_ref, q_s), (k_ref, k_s), (v_ref, v_s), (do_ref, do_s)], doc_ref,
                     doc_s, bars, b, h, n, geo)
    f = _factors(s, n, docs, geo)
    scores = _mm(square, (q_s, _t(k_s)))
    d_scores = _mm(square, (do_s, _t(v_s)))
    _stage(p_s, scores * f.diag)
    _stage(dp_s, d_scores * f.diag)
    _stage(x_s, k_s[...].astype(_F32) * f.k_decay)
    _stage_state(dstate_c_s, dstate_s)
    plgpu.commit_smem()
    dk = _mm(rows, (_t(dp_s), q_s)) + _mm(rows, (v_s, _t(dstate_c_s))) * f.k_decay
    _store(o_s, _seq_block(dk_ref, b, h, n, geo), dk)
    kterm = kterm + _weighted_sum(k_s, dk, f.pos1)
    dv = _mm(rows, (_t(p_s), do_s), (x_s, dstate_c_s))
    _store(o_s, _seq_block(dv_ref, b, h, n, geo), dv)

    _stage(x_s, q_s[...].astype(_F32) * f.q_decay)
    plgpu.commit_smem()
    _recur(dstate_s, f.span, x_s, do_s)
    return kterm

  kterm = lax.fori_loop(0, geo.num_chunks, body, jnp.zeros((), _F32))
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(dstate_s, ds0_ref.at[b, h])
  plgpu.wait_smem_to_gmem(0)
  _store(acc_s, kterm_ref.at[b, h], jnp.full(acc_s.shape, kterm, _F32))


# --------------------------------------------------------------------------------------
# Launch helpers.
# --------------------------------------------------------------------------------------


def _resolve_interpret(interpret: Interpret):
  """None -> Mosaic GPU (False) when the trace targets a GPU, else interpret mode."""
  if interpret is None:
    return False if target_platform() in GPU_PLATFORMS else DEFAULT_INTERPRET_PARAMS
  return interpret


COMPILER_PARAMS = plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup)


def _launch(body, geo: Geometry, out_types, scratch, interpret: Interpret, *,
            num_inputs: int, segmented: bool):
  """A plgpu.kernel over (B, H). `num_inputs` counts the kernel's inputs with the document
  starts; without segment ids the body's `doc_ref` and `doc_s` are bound to None."""
  interp = _resolve_interpret(interpret)
  kwargs = {} if interp is False else {"interpret": interp}
  kernel = functools.partial(body, geo=geo)
  if not segmented:
    scratch = [x for i, x in enumerate(scratch) if i != 1]

    def kernel(*refs, **kw):  # pylint: disable=function-redefined
      refs = list(refs)
      refs.insert(1, None)                             # doc_ref
      refs.insert(num_inputs + len(out_types) + 1, None)  # doc_s, after slope_s
      return body(*refs, geo=geo, **kw)

  return plgpu.kernel(
      kernel,
      out_type=out_types,
      scratch_types=scratch,
      grid=(geo.batch, geo.heads),
      grid_names=("b", "h"),
      # Named, never defaulted: the default flipped from Lane to Warpgroup in jax 0.11.0.
      # Warpgroup semantics infers register layouts and SMEM swizzles, which the array-level
      # body here relies on.
      compiler_params=COMPILER_PARAMS,
      **kwargs,
  )


def _doc_args(doc_start_BT, geo: Geometry) -> list:
  if doc_start_BT is None:
    return []
  return [pad_doc_starts(doc_start_BT.astype(jnp.int32), geo.padded_len)]


def _pad(x_BTHD: Array, geo: Geometry) -> Array:
  if geo.padded_len == geo.seq_len:
    return x_BTHD
  return jnp.pad(x_BTHD, ((0, 0), (0, geo.padded_len - geo.seq_len), (0, 0), (0, 0)))


def _geometry(q_BTHD: Array, block_sizes: BlockSizes, interpret: Interpret) -> Geometry:
  """The problem's geometry; for a compiled kernel also checks what Hopper codegen takes."""
  b, t, h, d = q_BTHD.shape
  compiled = _resolve_interpret(interpret) is False
  if compiled and jnp.dtype(q_BTHD.dtype) != jnp.dtype(jnp.bfloat16):
    raise ValueError(
        "lightning_attention_gpu: the compiled Mosaic GPU kernel takes bfloat16 q, k, v; got "
        f"{q_BTHD.dtype} (float32 wgmma runs as tf32 and takes no transposed SMEM operands). "
        "Use impl='pallas_triton' or 'chunked' for float32.")
  return Geometry(b, t, h, d, block_sizes.chunk_for(t, compiled))


def _seq_type(geo: Geometry, dtype):
  return jax.ShapeDtypeStruct((geo.batch, geo.padded_len, geo.heads, geo.head_dim), dtype)


def _state_type(geo: Geometry):
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, geo.head_dim, geo.head_dim), _F32)


def _acc_type(geo: Geometry):
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, _ACC_WIDTH), _F32)


# --------------------------------------------------------------------------------------
# Public kernel entry points (validated inputs; see lightning_gpu_ops for the custom_vjp).
# --------------------------------------------------------------------------------------


def forward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
            doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention forward; the contract of `lightning_tpu.forward`."""
  geo = _geometry(q_BTHD, block_sizes, interpret)
  dtype = q_BTHD.dtype
  docs = _doc_args(doc_start_BT, geo)
  scratch = [plgpu.SMEM((_ACC_WIDTH,), _F32), _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 3,
             _square_smem(geo, dtype), *[_chunk_smem(geo, dtype)] * 2,
             _state_smem(geo, dtype), _state_smem(geo), plgpu.Barrier(num_barriers=5)]
  call = _launch(_forward_kernel, geo, (_seq_type(geo, dtype), _state_type(geo)), scratch,
                 interpret, num_inputs=6, segmented=bool(docs))
  q, k, v = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD))
  out, final_state = call(_slope_rows(slope_H), *docs, q, k, v, state_BHDD)
  return out[:, :geo.seq_len], final_state


def backward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
             final_state_BHDD: Array, d_out_BTHD: Array, d_final_state_BHDD: Array,
             doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
             interpret: Interpret = None) -> tuple[Array, Array, Array, Array, Array]:
  """Gradients of <out, d_out> + <final_state, d_final_state>; the contract of
  `lightning_tpu.backward` (dq, dk, dv in q's dtype, dslope [H] and d_state float32)."""
  geo = _geometry(q_BTHD, block_sizes, interpret)
  dtype = q_BTHD.dtype
  docs = _doc_args(doc_start_BT, geo)
  q, k, v, do = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD, d_out_BTHD))
  slope_smem = plgpu.SMEM((_ACC_WIDTH,), _F32)
  acc_smem = plgpu.SMEM((_ACC_WIDTH,), _F32)

  dq_call = _launch(
      _dq_kernel, geo, (_seq_type(geo, dtype), _acc_type(geo)),
      [slope_smem, _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 4, _square_smem(geo, dtype),
       *[_chunk_smem(geo, dtype)] * 2, _state_smem(geo, dtype), _state_smem(geo), acc_smem,
       plgpu.Barrier(num_barriers=6)],
      interpret, num_inputs=7, segmented=bool(docs))
  dq, q_term = dq_call(_slope_rows(slope_H), *docs, q, k, v, do, state_BHDD)

  dkdv_call = _launch(
      _dkdv_kernel, geo,
      (_seq_type(geo, dtype), _seq_type(geo, dtype), _state_type(geo), _acc_type(geo)),
      [slope_smem, _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 4,
       *[_square_smem(geo, dtype)] * 2, *[_chunk_smem(geo, dtype)] * 2,
       _state_smem(geo, dtype), _state_smem(geo), acc_smem, plgpu.Barrier(num_barriers=6)],
      interpret, num_inputs=7, segmented=bool(docs))
  dk, dv, d_state, k_term = dkdv_call(_slope_rows(slope_H), *docs, q, k, v, do, d_final_state_BHDD)

  d_slope_H = slope_grad(q_term[..., 0], k_term[..., 0], final_state_BHDD,
                         d_final_state_BHDD, geo.seq_len)
  t = geo.seq_len
  return dq[:, :t], dk[:, :t], dv[:, :t], d_slope_H, d_state


def default_interpret_params(**kwargs) -> Optional[Any]:
  """An InterpretGPUParams with NaN-filled uninitialised memory plus `kwargs`."""
  return InterpretGPUParams(**{"uninitialized_memory": "nan", **kwargs})
