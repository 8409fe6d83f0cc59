"""Chunked lightning attention for TPU (Pallas / Mosaic TPU): forward and backward kernels.

The math is the chunked form of docs/MODEL.md §6.4, exactly as
`m1jax.ops.linear_attention_chunked.chunked` computes it. Per batch row b and head h (decay rate
s = slope[h]), chunk n holds C positions, of which m are real (m < C only in the tail chunk):

  forward, carrying S (the state before the chunk, [D,D] float32):
    O    = ((Q K^T) * Diag) V + (Q * qdecay) S       Diag[i,j] = exp(-s (i-j)) for i >= j, else 0
    S'   = exp(-s m) S + (K * kdecay)^T V            qdecay[i] = exp(-s (i+1))
                                                     kdecay[j] = exp(-s (m-1-j)) for j < m, else 0
  backward, given dO and dS_final:
    dQ   = ((dO V^T) * Diag) K + (dO S^T) * qdecay           forward order, S recomputed
    dK   = ((dO V^T) * Diag)^T Q + (V dS'^T) * kdecay        reverse order, carrying dS'
    dV   = ((Q K^T) * Diag)^T dO + (K * kdecay) dS'
    dS   = exp(-s m) dS' + (Q * qdecay)^T dO                 dS after chunk 0 is d_initial_state

Packed documents (segment ids): an optional [B,T] int32 input of document starts, read as a
[C,1] block per chunk, masks Diag, qdecay, kdecay and the span (lightning_chunk.py); without
segment ids the kernels take no such input.

Three `pallas_call`s, each over the grid (B, H, Z) with Z = ceil(T / C) chunks; B and H are
"parallel" (megacore / multi-core split) and Z "arbitrary" (a sequential carry in VMEM):
  `forward`:           o, final_state
  `backward` (dq):     dq in forward chunk order, re-running the state recurrence
  `backward` (dk, dv): dk, dv, d_initial_state in reverse chunk order, carrying dS

Recompute, not store: dq needs the state before every chunk. Storing them would write
Z [D,D] float32 states per (b,h) in the forward and read them back (T=8192, C=256, D=128:
32 x 64 KiB = 2 MiB per (b,h), as much as q itself in bf16, i.e. +2/9 of the backward's
minimum HBM traffic plus 2 MiB of forward writes and live memory held until the backward).
Recomputing costs one extra C x D x D matmul per chunk inside the dq kernel, which reads k
and v anyway: +2CD^2 flops on top of 4C^2 D + 2CD^2, hidden while the kernel sits at the
memory roofline (WORKSPACE_NOTES.md, "Issue 3"). dk/dv need no forward state at all.

Slope gradient: an exact identity instead of a kernel. With G_t = -s (t+1) the cumulative
log-decay, o and the final state depend on q_t only through q_t e^{G_t}, on k_t only through
k_t e^{-G_t}, and on the final state's own factor e^{G_{T-1}}, so
  dL/ds = -sum_t (t+1) (q_t . dq_t - k_t . dk_t) - T <dS_final, S_final>.
The dq and dk kernels accumulate their halves in float32 from the unrounded gradients.

Numerics: every exponent is -s * n with n >= 0 (clamped before `exp`, masked after), so slopes
from 1e-6 to 20 give no inf or NaN; the tail chunk's rows >= m are zeroed in k, v, q and dO
before use, so padding never reaches outputs, states or gradients. Matmul operands are in the
input dtype (bf16 on the MXU) with float32 accumulation, as in the reference. In interpret
mode (CPU), operands are upcast to float32 first: XLA:CPU cannot run some bf16 x bf16 -> f32
dots, and a bf16 product is exact in float32, so the numbers do not change.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C chunk length,
Z chunks.
"""
import dataclasses
import functools
from typing import Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.lightning_chunk import (SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, Geometry,
                                            chunk_decays, pad_doc_starts, round_up, slope_grad,
                                            target_platform, weighted_rowdot)

Array = jax.Array
_F32 = jnp.float32

# bf16 packs 16 rows per (sublane x lane) tile; a chunk that is a multiple of 16 tiles
# cleanly for both bf16 and f32 operands.
_CHUNK_MULTIPLE = 16
# Width of the per-(b,h) float32 accumulator outputs: one (8, 128) vreg tile.
_ACC_TILE = (8, 128)

# `interpret` argument: None = Mosaic when the trace targets TPU, interpret mode elsewhere
# (decided by the target platform, see `lightning_chunk.target_platform`, not by jax.default_backend(), so
# AOT TPU compiles from a CPU host get the real kernel); False = always Mosaic; an
# InterpretParams = always interpret mode with those parameters.
Interpret = Union[None, bool, pltpu.InterpretParams]

# Interpret mode used when `interpret=None` lowers for a non-TPU platform. NaN-filled
# uninitialised memory makes any read of a never-written buffer poison the result.
DEFAULT_INTERPRET_PARAMS = pltpu.InterpretParams(uninitialized_memory="nan")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tiling of the lightning kernels.

  block_t: chunk length C (positions per grid step), rounded up to a multiple of 16 and
    capped at T rounded up to 16. Chosen by roofline (WORKSPACE_NOTES.md, "Issue 3"): per
    token the forward does 4CD + 4D^2 flops against 8D bytes (bf16 q, k, v, o), so the
    kernel stays at the HBM roofline while C <= 2 P/BW - D: 352 on v5e, 204 on v5p, 992 on
    v6e (D = 128). 256 keeps v5e and v6e memory-bound, is within 10% of the ridge on v5p,
    fills a 256-wide MXU (v6e) and amortises the ~0.35 us per-grid-step overhead over
    50 MFLOP. Not yet measured on hardware.
  """
  block_t: int = 256

  def with_chunk(self, chunk: int) -> "BlockSizes":
    return dataclasses.replace(self, block_t=chunk)

  def chunk_for(self, seq_len: int) -> int:
    """The chunk length C actually used for a sequence of `seq_len` tokens."""
    chunk = round_up(max(int(self.block_t), 1), _CHUNK_MULTIPLE)
    return min(chunk, round_up(max(seq_len, 1), _CHUNK_MULTIPLE))


# --------------------------------------------------------------------------------------
# In-kernel helpers. Values are 2-D: rows are chunk positions, columns head dims.
# --------------------------------------------------------------------------------------


def _dot(a: Array, b: Array, *, trans_b: bool = False, upcast: bool) -> Array:
  """a @ b (or a @ b^T) with float32 accumulation."""
  if upcast:
    a, b = a.astype(_F32), b.astype(_F32)
  dims = (((1,), (1 if trans_b else 0,)), ((), ()))
  return lax.dot_general(a, b, dims, preferred_element_type=_F32)


def _dot_tn(a_f32: Array, b: Array, *, dtype, upcast: bool) -> Array:
  """a^T @ b for a float32 `a`: transposed in float32 (Mosaic's best-supported transpose),
  then cast to the operand dtype like the reference's casts."""
  return _dot(a_f32.T.astype(dtype), b, upcast=upcast)


def _load_rows(ref, valid):
  """Reads a [C,D] block, zeroing rows past the sequence end (padding or garbage)."""
  x = ref[...]
  return jnp.where(valid, x, jnp.zeros_like(x))


# --------------------------------------------------------------------------------------
# Kernels. Refs arrive squeezed: sequence blocks [C,D], states [D,D], accumulators [8,128].
# --------------------------------------------------------------------------------------


def _docs(doc_ref):
  """The chunk's [C,1] int32 document starts, or None when the call has no segment ids."""
  return None if doc_ref is None else doc_ref[...]


def _forward_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, sfin_ref,
                    state_ref, *, seq_len, chunk, upcast):
  n = pl.program_id(2)
  s = slope_ref[pl.program_id(1)]
  dtype = q_ref.dtype

  @pl.when(n == 0)
  def _():
    state_ref[...] = s0_ref[...]

  dec = chunk_decays(s, n, seq_len=seq_len, chunk=chunk, doc_start=_docs(doc_ref))
  q = _load_rows(q_ref, dec.valid)
  k = _load_rows(k_ref, dec.valid)
  v = _load_rows(v_ref, dec.valid)
  state = state_ref[...]

  scores = _dot(q, k, trans_b=True, upcast=upcast) * dec.diag
  out = _dot(scores.astype(dtype), v, upcast=upcast)
  q_scaled = (q.astype(_F32) * dec.q_decay).astype(dtype)
  out = out + _dot(q_scaled, state.astype(dtype), upcast=upcast)
  o_ref[...] = out.astype(o_ref.dtype)

  k_scaled = k.astype(_F32) * dec.k_decay
  state = dec.span * state + _dot_tn(k_scaled, v, dtype=dtype, upcast=upcast)
  state_ref[...] = state

  @pl.when(n == pl.num_programs(2) - 1)
  def _():
    sfin_ref[...] = state


def _dq_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, s0_ref, dq_ref, qterm_ref,
               state_ref, *, seq_len, chunk, upcast):
  n = pl.program_id(2)
  s = slope_ref[pl.program_id(1)]
  dtype = q_ref.dtype

  @pl.when(n == 0)
  def _():
    state_ref[...] = s0_ref[...]
    qterm_ref[...] = jnp.zeros(qterm_ref.shape, _F32)

  dec = chunk_decays(s, n, seq_len=seq_len, chunk=chunk, doc_start=_docs(doc_ref))
  q = _load_rows(q_ref, dec.valid)
  k = _load_rows(k_ref, dec.valid)
  v = _load_rows(v_ref, dec.valid)
  do = _load_rows(do_ref, dec.valid)
  state = state_ref[...]

  d_scores = _dot(do, v, trans_b=True, upcast=upcast) * dec.diag
  dq = _dot(d_scores.astype(dtype), k, upcast=upcast)
  dq = dq + _dot(do, state.astype(dtype), trans_b=True, upcast=upcast) * dec.q_decay
  dq_ref[...] = dq.astype(dq_ref.dtype)
  qterm = weighted_rowdot(q.astype(_F32), dq, dec.pos1)
  qterm_ref[...] += jnp.broadcast_to(qterm, qterm_ref.shape)

  # The same state recurrence as the forward (recomputed; see the module docstring).
  k_scaled = k.astype(_F32) * dec.k_decay
  state_ref[...] = dec.span * state + _dot_tn(k_scaled, v, dtype=dtype, upcast=upcast)


def _dkdv_kernel(slope_ref, doc_ref, q_ref, k_ref, v_ref, do_ref, dsfin_ref, dk_ref, dv_ref,
                 ds0_ref, kterm_ref, dstate_ref, *, seq_len, chunk, upcast):
  n = pl.program_id(2)
  num_chunks = pl.num_programs(2)
  chunk_idx = num_chunks - 1 - n  # grid step n visits chunks last to first
  s = slope_ref[pl.program_id(1)]
  dtype = q_ref.dtype

  @pl.when(n == 0)
  def _():
    dstate_ref[...] = dsfin_ref[...]
    kterm_ref[...] = jnp.zeros(kterm_ref.shape, _F32)

  dec = chunk_decays(s, chunk_idx, seq_len=seq_len, chunk=chunk,
                     doc_start=_docs(doc_ref))
  q = _load_rows(q_ref, dec.valid)
  k = _load_rows(k_ref, dec.valid)
  v = _load_rows(v_ref, dec.valid)
  do = _load_rows(do_ref, dec.valid)
  dstate = dstate_ref[...]
  dstate_c = dstate.astype(dtype)

  scores = _dot(q, k, trans_b=True, upcast=upcast) * dec.diag
  d_scores = _dot(do, v, trans_b=True, upcast=upcast) * dec.diag
  k_scaled = k.astype(_F32) * dec.k_decay

  dk = _dot_tn(d_scores, q, dtype=dtype, upcast=upcast)
  dk = dk + _dot(v, dstate_c, trans_b=True, upcast=upcast) * dec.k_decay
  dv = _dot_tn(scores, do, dtype=dtype, upcast=upcast)
  dv = dv + _dot(k_scaled.astype(dtype), dstate_c, upcast=upcast)
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  kterm = weighted_rowdot(k.astype(_F32), dk, dec.pos1)
  kterm_ref[...] += jnp.broadcast_to(kterm, kterm_ref.shape)

  q_scaled = q.astype(_F32) * dec.q_decay
  dstate = dec.span * dstate + _dot_tn(q_scaled, do, dtype=dtype, upcast=upcast)
  dstate_ref[...] = dstate

  @pl.when(n == num_chunks - 1)
  def _():
    ds0_ref[...] = dstate


# --------------------------------------------------------------------------------------
# Layout: D = 128 reads [B,T,H*D] in place (a free reshape; the (C, 128) block is lane-dense);
# D = 64 cannot be a lane block on its own, so q/k/v are transposed to [B,H,T,D].
# --------------------------------------------------------------------------------------


def _to_kernel_layout(x_BTHD: Array, geo: Geometry) -> Array:
  b, t, h, d = x_BTHD.shape
  if geo.padded_len != t:
    x_BTHD = jnp.pad(x_BTHD, ((0, 0), (0, geo.padded_len - t), (0, 0), (0, 0)))
  if geo.fused:
    return x_BTHD.reshape(b, geo.padded_len, h * d)
  return jnp.transpose(x_BTHD, (0, 2, 1, 3))


def _from_kernel_layout(x: Array, geo: Geometry) -> Array:
  b, t, h, d = geo.batch, geo.seq_len, geo.heads, geo.head_dim
  if geo.fused:
    x_BTHD = x.reshape(b, geo.padded_len, h, d)
  else:
    x_BTHD = jnp.transpose(x, (0, 2, 1, 3))
  return x_BTHD[:, :t]


def _seq_spec(geo: Geometry, reverse: bool = False) -> pl.BlockSpec:
  last = geo.num_chunks - 1
  chunk_of = (lambda n: last - n) if reverse else (lambda n: n)
  sq = pl.Squeezed()
  if geo.fused:
    return pl.BlockSpec((sq, geo.chunk, geo.head_dim), lambda b, h, n: (b, chunk_of(n), h))
  return pl.BlockSpec((sq, sq, geo.chunk, geo.head_dim), lambda b, h, n: (b, h, chunk_of(n), 0))


def _doc_spec(geo: Geometry, reverse: bool = False) -> pl.BlockSpec:
  """[C,1] int32 document starts of a chunk, from [B,T_pad,1] (a full-width lane block)."""
  last = geo.num_chunks - 1
  chunk_of = (lambda n: last - n) if reverse else (lambda n: n)
  return pl.BlockSpec((pl.Squeezed(), geo.chunk, 1), lambda b, h, n: (b, chunk_of(n), 0))


def _doc_inputs(doc_start_BT, geo: Geometry, reverse: bool = False):
  """(in_specs, args) for the optional document-start input."""
  if doc_start_BT is None:
    return [], []
  docs = pad_doc_starts(doc_start_BT.astype(jnp.int32), geo.padded_len)[:, :, None]
  return [_doc_spec(geo, reverse)], [docs]


def _with_docs(kernel, segmented: bool):
  """The kernel with `doc_ref` bound to None when the call has no segment ids."""
  if segmented:
    return kernel
  return lambda slope_ref, *refs, **kw: kernel(slope_ref, None, *refs, **kw)


def _state_spec(geo: Geometry) -> pl.BlockSpec:
  sq = pl.Squeezed()
  return pl.BlockSpec((sq, sq, geo.head_dim, geo.head_dim), lambda b, h, n: (b, h, 0, 0))


def _acc_spec() -> pl.BlockSpec:
  sq = pl.Squeezed()
  return pl.BlockSpec((sq, sq, *_ACC_TILE), lambda b, h, n: (b, h, 0, 0))


def _seq_shape(geo: Geometry, dtype) -> jax.ShapeDtypeStruct:
  if geo.fused:
    return jax.ShapeDtypeStruct((geo.batch, geo.padded_len, geo.heads * geo.head_dim), dtype)
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, geo.padded_len, geo.head_dim), dtype)


def _state_shape(geo: Geometry) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, geo.head_dim, geo.head_dim), _F32)


def _acc_shape(geo: Geometry) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((geo.batch, geo.heads, *_ACC_TILE), _F32)


def _cost(geo: Geometry, itemsize: int, *, matmul_terms: int, cd2_terms: int,
          seq_arrays: int, state_arrays: int) -> pl.CostEstimate:
  """Flops, exps and HBM bytes of one call: `matmul_terms` C x C x D matmuls and
  `cd2_terms` C x D x D matmuls per chunk, `seq_arrays` [B,T,H,D] reads/writes."""
  c, d = geo.chunk, geo.head_dim
  steps = geo.batch * geo.heads * geo.num_chunks
  flops = steps * 2 * c * d * (matmul_terms * c + cd2_terms * d)
  transcendentals = steps * (c * c + 2 * c + 1)
  bytes_accessed = (seq_arrays * geo.batch * geo.padded_len * geo.heads * d * itemsize
                    + state_arrays * geo.batch * geo.heads * d * d * 4)
  return pl.CostEstimate(flops=flops, transcendentals=transcendentals,
                         bytes_accessed=bytes_accessed)


def _compiler_params() -> pltpu.CompilerParams:
  return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _resolve_interpret(interpret: Interpret):
  """None -> Mosaic (False) when targeting TPU, else the default TPU interpret mode.

  Not `lax.platform_dependent`: TPU interpret mode stages ordered io_callbacks, and jax
  0.10.2 fails to lower a platform-pruned `cond` whose branches differ in effects
  ("Lowering rule for `cond` returns incorrect set of output tokens").
  """
  if interpret is None:
    return False if target_platform() == "tpu" else DEFAULT_INTERPRET_PARAMS
  return interpret


def _run(build, interpret: Interpret, *args):
  return build(_resolve_interpret(interpret))(*args)


def _kernel_kwargs(geo: Geometry, interpret) -> dict:
  return dict(seq_len=geo.seq_len, chunk=geo.chunk, upcast=interpret is not False)


def _smem_spec() -> pl.BlockSpec:
  return pl.BlockSpec(memory_space=pltpu.SMEM)


# --------------------------------------------------------------------------------------
# Public kernel entry points (validated inputs; see lightning_tpu_ops for the custom_vjp).
# --------------------------------------------------------------------------------------


def _geometry(q_BTHD: Array, block_sizes: BlockSizes) -> Geometry:
  b, t, h, d = q_BTHD.shape
  return Geometry(b, t, h, d, block_sizes.chunk_for(t))


def forward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
            doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention forward.

  Args:
    q_BTHD, k_BTHD, v_BTHD: [B,T,H,D], float32 or bfloat16, D in SUPPORTED_HEAD_DIMS, T >= 1.
    slope_H: [H] float32 decay rates.
    state_BHDD: [B,H,D,D] float32 initial state.
    doc_start_BT: None, or [B,T] int32 `lightning_chunk.doc_starts` of packed documents.

  Returns:
    out_BTHD: [B,T,H,D] in q's dtype; final_state_BHDD: [B,H,D,D] float32.
  """
  geo = _geometry(q_BTHD, block_sizes)
  dtype = q_BTHD.dtype

  doc_specs, doc_args = _doc_inputs(doc_start_BT, geo)

  def build(interp):
    kernel = functools.partial(_with_docs(_forward_kernel, bool(doc_specs)),
                               **_kernel_kwargs(geo, interp))
    return pl.pallas_call(
        kernel,
        grid=geo.grid,
        in_specs=[_smem_spec(), *doc_specs, _seq_spec(geo), _seq_spec(geo), _seq_spec(geo),
                  _state_spec(geo)],
        out_specs=[_seq_spec(geo), _state_spec(geo)],
        out_shape=[_seq_shape(geo, dtype), _state_shape(geo)],
        scratch_shapes=[pltpu.VMEM((geo.head_dim, geo.head_dim), _F32)],
        compiler_params=_compiler_params(),
        cost_estimate=_cost(geo, dtype.itemsize, matmul_terms=2, cd2_terms=2, seq_arrays=4,
                            state_arrays=2),
        interpret=interp,
        name="lightning_fwd",
    )

  qkv = [_to_kernel_layout(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD)]
  out, final_state = _run(build, interpret, slope_H, *doc_args, *qkv, state_BHDD)
  return _from_kernel_layout(out, geo), final_state


def backward(q_BTHD: Array, k_BTHD: Array, v_BTHD: Array, slope_H: Array, state_BHDD: Array,
             final_state_BHDD: Array, d_out_BTHD: Array, d_final_state_BHDD: Array,
             doc_start_BT: Optional[Array] = None, *, block_sizes: BlockSizes = BlockSizes(),
             interpret: Interpret = None) -> tuple[Array, Array, Array, Array, Array]:
  """Gradients of <out, d_out> + <final_state, d_final_state>.

  Args: as `forward`, plus final_state_BHDD (the forward's [B,H,D,D] float32 output),
    d_out_BTHD ([B,T,H,D], q's dtype) and d_final_state_BHDD ([B,H,D,D] float32).

  Returns:
    dq, dk, dv: [B,T,H,D] in q's dtype; dslope: [H] float32; d_state: [B,H,D,D] float32.
  """
  geo = _geometry(q_BTHD, block_sizes)
  dtype = q_BTHD.dtype
  seq_specs = [_seq_spec(geo)] * 4
  rev_specs = [_seq_spec(geo, reverse=True)] * 4

  doc_specs, doc_args = _doc_inputs(doc_start_BT, geo)
  rev_doc_specs, _ = _doc_inputs(doc_start_BT, geo, reverse=True)

  def build_dq(interp):
    kernel = functools.partial(_with_docs(_dq_kernel, bool(doc_specs)),
                               **_kernel_kwargs(geo, interp))
    return pl.pallas_call(
        kernel,
        grid=geo.grid,
        in_specs=[_smem_spec(), *doc_specs, *seq_specs, _state_spec(geo)],
        out_specs=[_seq_spec(geo), _acc_spec()],
        out_shape=[_seq_shape(geo, dtype), _acc_shape(geo)],
        scratch_shapes=[pltpu.VMEM((geo.head_dim, geo.head_dim), _F32)],
        compiler_params=_compiler_params(),
        cost_estimate=_cost(geo, dtype.itemsize, matmul_terms=2, cd2_terms=2, seq_arrays=5,
                            state_arrays=1),
        interpret=interp,
        name="lightning_bwd_dq",
    )

  def build_dkdv(interp):
    kernel = functools.partial(_with_docs(_dkdv_kernel, bool(doc_specs)),
                               **_kernel_kwargs(geo, interp))
    return pl.pallas_call(
        kernel,
        grid=geo.grid,
        in_specs=[_smem_spec(), *rev_doc_specs, *rev_specs, _state_spec(geo)],
        out_specs=[rev_specs[0], rev_specs[0], _state_spec(geo), _acc_spec()],
        out_shape=[_seq_shape(geo, dtype), _seq_shape(geo, dtype), _state_shape(geo),
                   _acc_shape(geo)],
        scratch_shapes=[pltpu.VMEM((geo.head_dim, geo.head_dim), _F32)],
        compiler_params=_compiler_params(),
        cost_estimate=_cost(geo, dtype.itemsize, matmul_terms=4, cd2_terms=3, seq_arrays=6,
                            state_arrays=2),
        interpret=interp,
        name="lightning_bwd_dkdv",
    )

  q, k, v, do = (_to_kernel_layout(x, geo) for x in (q_BTHD, k_BTHD, v_BTHD, d_out_BTHD))
  dq, q_term = _run(build_dq, interpret, slope_H, *doc_args, q, k, v, do, state_BHDD)
  dk, dv, d_state, k_term = _run(build_dkdv, interpret, slope_H, *doc_args, q, k, v, do,
                                 d_final_state_BHDD)
  d_slope_H = slope_grad(q_term[..., 0, 0], k_term[..., 0, 0], final_state_BHDD,
                         d_final_state_BHDD, geo.seq_len)
  return (_from_kernel_layout(dq, geo), _from_kernel_layout(dk, geo),
          _from_kernel_layout(dv, geo), d_slope_H, d_state)
