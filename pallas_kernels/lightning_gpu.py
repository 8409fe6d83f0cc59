"""Chunked lightning attention for GPUs (Pallas / Mosaic GPU): forward and backward kernels.

The math is the TPU kernel's (pallas_kernels/lightning_tpu.py, whose docstring derives it):
the same chunk decays, document masks, tail masking, recompute-not-store backward and
slope-gradient identity, all from pallas_kernels/lightning_chunk.py so the kernels cannot
drift apart. Only the memory movement differs:

  One Mosaic GPU program per (b, h) (`plgpu.kernel`, grid (B, H)). Inputs stay in GMEM in
  their [B,T,H,D] layout (T padded to a multiple of C by the wrapper); each chunk's
  [C,D] slice `x.at[b, pl.ds(n C, C), h]` is copied GMEM -> SMEM (a TMA on Hopper; the same
  slicing as jax's attention_mgpu.py), outputs are staged in SMEM and copied back. The
  float32 [D,D] state (or dS in the reverse pass) lives in SMEM for the whole loop over
  chunks: 64 KiB at D = 128, too big to hold in one warpgroup's registers next to the
  [C,C] scores.
    `forward`:           o, final_state                    chunks 0 .. Z-1
    `backward` (dq):     dq, q-term of dslope, S recomputed   chunks 0 .. Z-1
    `backward` (dk, dv): dk, dv, d_initial_state, k-term      chunks Z-1 .. 0

Status (jax 0.10.2 CPU, jax 0.11.2 on the GPU machine): this formulation is verified in
Mosaic GPU *interpret mode* only (tests/pallas_kernels/test_lightning_gpu.py). Two things
must change for real Hopper codegen, both confined to `_mm` and the SMEM scratch types:
  1. Matmuls. Mosaic GPU has no lowering for `lax.dot_general` on register values; every
     product must be `plgpu.wgmma(acc_ref, a, b)` with `b` (and usually `a`) an SMEM ref
     carrying `TilingTransform((8, 64))` + `SwizzleTransform(128)` (see attention_mgpu.py),
     K^T via `plgpu.transpose_ref`, accumulators `plgpu.ACC((C, D), f32)`. Interpret mode's
     wgmma (jax 0.10.2) reads only untransformed SMEM refs, so it cannot check that path.
  2. Pipelining. Copies here are synchronous (issue, wait, compute); on hardware the next
     chunk's TMA should be issued before the current chunk's wgmmas (two SMEM slots per
     input, `max_concurrent_steps=2`), and the sequence tiles C = 64 match one warpgroup's
     wgmma M. SMEM at C = 64, D = 128, bf16: dkdv holds q,k,v,dO (64 KiB), dk,dv staging
     (32 KiB) and dS (64 KiB): 160 KiB of the H100's 227 KiB; double buffering the inputs
     fits only at C = 32 or with dS in registers of a second warpgroup.
Interpret mode upcasts matmul operands to float32 (a bf16 product is exact in float32;
XLA:CPU cannot run some bf16 x bf16 -> f32 dots), as the TPU kernel does.

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
                                            SUPPORTED_HEAD_DIMS, Geometry, chunk_decays,
                                            pad_doc_starts, round_up, slope_grad,
                                            target_platform, weighted_rowdot)

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

  block_t: chunk length C, rounded up to a multiple of 16 and capped at T rounded up to 16.
    64 is one warpgroup's wgmma M and keeps the dkdv kernel's SMEM (see the module
    docstring) within Hopper's 227 KiB at D = 128. Not measured on hardware.
  """
  block_t: int = 64

  def with_chunk(self, chunk: int) -> "BlockSizes":
    return dataclasses.replace(self, block_t=chunk)

  def chunk_for(self, seq_len: int) -> int:
    chunk = round_up(max(int(self.block_t), 1), 16)
    return min(chunk, round_up(max(seq_len, 1), 16))


def _mm(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False) -> Array:
  """a @ b (a^T, b^T optional) with float32 accumulation; the one place that becomes
  `plgpu.wgmma` on hardware (module docstring)."""
  a, b = a.astype(_F32), b.astype(_F32)
  dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=_F32)


def _rounded(x_f32: Array, dtype) -> Array:
  """Rounds a float32 value to the input dtype, as the reference rounds matmul operands."""
  return x_f32.astype(dtype)


# --------------------------------------------------------------------------------------
# Kernel plumbing: synchronous GMEM <-> SMEM chunk copies.
# --------------------------------------------------------------------------------------


def _load(src_gmem, dst_smem, barrier):
  plgpu.copy_gmem_to_smem(src_gmem, dst_smem, barrier)
  plgpu.barrier_wait(barrier)
  return dst_smem[...]


def _store(src_smem, dst_gmem, value):
  """Writes `value` through SMEM to GMEM and waits, so the SMEM slot is free again."""
  src_smem[...] = value.astype(src_smem.dtype)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(src_smem, dst_gmem)
  plgpu.wait_smem_to_gmem(0)


def _masked(x, valid):
  return jnp.where(valid, x, jnp.zeros_like(x))


def _seq_block(ref, b, h, n, geo: Geometry):
  return ref.at[b, pl.ds(n * geo.chunk, geo.chunk), h]


def _chunk_smem(geo: Geometry, dtype):
  return plgpu.SMEM((geo.chunk, geo.head_dim), dtype)


def _doc_smem(geo: Geometry):
  return plgpu.SMEM((geo.chunk,), jnp.int32)


def _state_smem(geo: Geometry):
  return plgpu.SMEM((geo.head_dim, geo.head_dim), _F32)


def _slope(slope_gmem, slope_smem, barrier, h):
  slopes = _load(slope_gmem, slope_smem, barrier)
  # A select instead of a dynamic scalar index into SMEM: portable and cheap (H <= 64).
  lanes = lax.broadcasted_iota(jnp.int32, slopes.shape, 0)
  return jnp.sum(jnp.where(lanes == h, slopes, 0.0))


# --------------------------------------------------------------------------------------
# Kernels (one program per (b, h)).
# --------------------------------------------------------------------------------------


def _docs(doc_ref, doc_s, barrier, b, n, geo: Geometry):
  """The chunk's [C,1] int32 document starts, or None when the call has no segment ids."""
  if doc_ref is None:
    return None
  return _load(doc_ref.at[b, pl.ds(n * geo.chunk, geo.chunk)], doc_s, barrier)[:, None]


def _forward_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, sfin_ref,
                    slope_s, doc_s, q_s, k_s, v_s, o_s, state_s, bars, *, geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  dtype = q_s.dtype
  _load(s0_ref.at[b, h], state_s, bars.at[1])

  @pl.loop(0, geo.num_chunks)
  def _(n):
    dec = chunk_decays(s, n, seq_len=geo.seq_len, chunk=geo.chunk,
                       doc_start=_docs(doc_ref, doc_s, bars.at[4], b, n, geo))
    q = _masked(_load(_seq_block(q_ref, b, h, n, geo), q_s, bars.at[1]), dec.valid)
    k = _masked(_load(_seq_block(k_ref, b, h, n, geo), k_s, bars.at[2]), dec.valid)
    v = _masked(_load(_seq_block(v_ref, b, h, n, geo), v_s, bars.at[3]), dec.valid)
    state = state_s[...]

    scores = _mm(q, k, trans_b=True) * dec.diag
    out = _mm(_rounded(scores, dtype), v)
    q_scaled = _rounded(q.astype(_F32) * dec.q_decay, dtype)
    out = out + _mm(q_scaled, _rounded(state, dtype))
    _store(o_s, _seq_block(o_ref, b, h, n, geo), out)

    k_scaled = _rounded(k.astype(_F32) * dec.k_decay, dtype)
    state_s[...] = dec.span * state + _mm(k_scaled, v, trans_a=True)

  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(state_s, sfin_ref.at[b, h])
  plgpu.wait_smem_to_gmem(0)


def _dq_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, s0_ref, dq_ref, qterm_ref,
               slope_s, doc_s, q_s, k_s, v_s, do_s, dq_s, state_s, acc_s, bars, *,
               geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  dtype = q_s.dtype
  _load(s0_ref.at[b, h], state_s, bars.at[1])

  def body(n, qterm):
    dec = chunk_decays(s, n, seq_len=geo.seq_len, chunk=geo.chunk,
                       doc_start=_docs(doc_ref, doc_s, bars.at[5], b, n, geo))
    q = _masked(_load(_seq_block(q_ref, b, h, n, geo), q_s, bars.at[1]), dec.valid)
    k = _masked(_load(_seq_block(k_ref, b, h, n, geo), k_s, bars.at[2]), dec.valid)
    v = _masked(_load(_seq_block(v_ref, b, h, n, geo), v_s, bars.at[3]), dec.valid)
    do = _masked(_load(_seq_block(do_ref, b, h, n, geo), do_s, bars.at[4]), dec.valid)
    state = state_s[...]

    d_scores = _mm(do, v, trans_b=True) * dec.diag
    dq = _mm(_rounded(d_scores, dtype), k)
    dq = dq + _mm(do, _rounded(state, dtype), trans_b=True) * dec.q_decay
    _store(dq_s, _seq_block(dq_ref, b, h, n, geo), dq)
    qterm = qterm + weighted_rowdot(q.astype(_F32), dq, dec.pos1)[0, 0]

    # The forward's state recurrence, recomputed (lightning_tpu.py: recompute, not store).
    k_scaled = _rounded(k.astype(_F32) * dec.k_decay, dtype)
    state_s[...] = dec.span * state + _mm(k_scaled, v, trans_a=True)
    return qterm

  qterm = lax.fori_loop(0, geo.num_chunks, body, jnp.zeros((), _F32))
  _store(acc_s, qterm_ref.at[b, h], jnp.full(acc_s.shape, qterm, _F32))


def _dkdv_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, dsfin_ref, dk_ref, dv_ref,
                 ds0_ref, kterm_ref, slope_s, doc_s, q_s, k_s, v_s, do_s, dk_s, dv_s, dstate_s,
                 acc_s, bars, *, geo: Geometry):
  b, h = lax.axis_index("b"), lax.axis_index("h")
  s = _slope(slope_ref, slope_s, bars.at[0], h)
  dtype = q_s.dtype
  _load(dsfin_ref.at[b, h], dstate_s, bars.at[1])

  def body(step, kterm):
    n = geo.num_chunks - 1 - step  # chunks last to first, carrying dS
    dec = chunk_decays(s, n, seq_len=geo.seq_len, chunk=geo.chunk,
                       doc_start=_docs(doc_ref, doc_s, bars.at[5], b, n, geo))
    q = _masked(_load(_seq_block(q_ref, b, h, n, geo), q_s, bars.at[1]), dec.valid)
    k = _masked(_load(_seq_block(k_ref, b, h, n, geo), k_s, bars.at[2]), dec.valid)
    v = _masked(_load(_seq_block(v_ref, b, h, n, geo), v_s, bars.at[3]), dec.valid)
    do = _masked(_load(_seq_block(do_ref, b, h, n, geo), do_s, bars.at[4]), dec.valid)
    dstate = dstate_s[...]
    dstate_c = _rounded(dstate, dtype)

    scores = _mm(q, k, trans_b=True) * dec.diag
    d_scores = _mm(do, v, trans_b=True) * dec.diag
    k_scaled = k.astype(_F32) * dec.k_decay

    dk = _mm(_rounded(d_scores, dtype), q, trans_a=True)
    dk = dk + _mm(v, dstate_c, trans_b=True) * dec.k_decay
    dv = _mm(_rounded(scores, dtype), do, trans_a=True)
    dv = dv + _mm(_rounded(k_scaled, dtype), dstate_c)
    _store(dk_s, _seq_block(dk_ref, b, h, n, geo), dk)
    _store(dv_s, _seq_block(dv_ref, b, h, n, geo), dv)
    kterm = kterm + weighted_rowdot(k.astype(_F32), dk, dec.pos1)[0, 0]

    q_scaled = _rounded(q.astype(_F32) * dec.q_decay, dtype)
    dstate_s[...] = dec.span * dstate + _mm(q_scaled, do, trans_a=True)
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


def _geometry(q_BTHD: Array, block_sizes: BlockSizes) -> Geometry:
  b, t, h, d = q_BTHD.shape
  return Geometry(b, t, h, d, block_sizes.chunk_for(t))


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
  geo = _geometry(q_BTHD, block_sizes)
  dtype = q_BTHD.dtype
  docs = _doc_args(doc_start_BT, geo)
  scratch = [plgpu.SMEM((geo.heads,), _F32), _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 4,
             _state_smem(geo), plgpu.Barrier(num_barriers=5)]
  call = _launch(_forward_kernel, geo, (_seq_type(geo, dtype), _state_type(geo)), scratch,
                 interpret, num_inputs=6, segmented=bool(docs))
  q, k, v = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD))
  out, final_state = call(slope_H, *docs, q, k, v, state_BHDD)
  return out[:, :geo.seq_len], final_state


def backward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
             final_state_BHDD: Array, d_out_BTHD: Array, d_final_state_BHDD: Array,
             doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
             interpret: Interpret = None) -> tuple[Array, Array, Array, Array, Array]:
  """Gradients of <out, d_out> + <final_state, d_final_state>; the contract of
  `lightning_tpu.backward` (dq, dk, dv in q's dtype, dslope [H] and d_state float32)."""
  geo = _geometry(q_BTHD, block_sizes)
  dtype = q_BTHD.dtype
  docs = _doc_args(doc_start_BT, geo)
  q, k, v, do = (_pad(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD, d_out_BTHD))
  slope_smem = plgpu.SMEM((geo.heads,), _F32)
  acc_smem = plgpu.SMEM((_ACC_WIDTH,), _F32)

  dq_call = _launch(
      _dq_kernel, geo, (_seq_type(geo, dtype), _acc_type(geo)),
      [slope_smem, _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 5, _state_smem(geo), acc_smem,
       plgpu.Barrier(num_barriers=6)],
      interpret, num_inputs=7, segmented=bool(docs))
  dq, q_term = dq_call(slope_H, *docs, q, k, v, do, state_BHDD)

  dkdv_call = _launch(
      _dkdv_kernel, geo,
      (_seq_type(geo, dtype), _seq_type(geo, dtype), _state_type(geo), _acc_type(geo)),
      [slope_smem, _doc_smem(geo), *[_chunk_smem(geo, dtype)] * 6, _state_smem(geo), acc_smem,
       plgpu.Barrier(num_barriers=6)],
      interpret, num_inputs=7, segmented=bool(docs))
  dk, dv, d_state, k_term = dkdv_call(slope_H, *docs, q, k, v, do, d_final_state_BHDD)

  d_slope_H = slope_grad(q_term[..., 0], k_term[..., 0], final_state_BHDD,
                         d_final_state_BHDD, geo.seq_len)
  t = geo.seq_len
  return dq[:, :t], dk[:, :t], dv[:, :t], d_slope_H, d_state


def default_interpret_params(**kwargs) -> Optional[Any]:
  """An InterpretGPUParams with NaN-filled uninitialised memory plus `kwargs`."""
  return InterpretGPUParams(**{"uninitialized_memory": "nan", **kwargs})
