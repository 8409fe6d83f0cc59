"""Sequence-parallel lightning attention: LASP-2 with decay over a `sequence` mesh axis.

The sequence of T tokens is split into P contiguous shards of m = T/P tokens. Inside one
`jax.shard_map` each shard r

  1. runs the configured operator (`lightning_attention`, so a Pallas kernel runs per
     shard) on its own tokens from a zero state: out_loc and S_loc(r), the [B,H,D,D] fp32
     state of the shard's last document;
  2. all-gathers S_loc over the axis (ONE collective of [P,B,H,D,D] fp32, plus a [P,B,3]
     int32 summary of the shard's documents when segment ids are given);
  3. forms the decayed exclusive prefix
        S_in(r) = lambda^(m r) S_init + sum_{s<r} lambda^(m (r-1-s)) S_loc(s)
     and adds o_i += lambda^(i+1) q_i S_in(r) (i the local index).
The shard's end state is lambda^m S_in(r) + S_loc(r); the final state is the last shard's.
Autodiff through the all-gather gives the backward (its transpose is a reduce-scatter), so
no hand-written gradient is needed.

Packed documents (segment ids; same semantics as `chunked`: a document is a maximal run of
equal ids, initial_state feeds the row's first document, the final state is its last):
a shard CUTS the carried state when a document starts anywhere in it (at its first token,
i.e. its first id differs from the previous shard's last, or later). A cutting shard passes
only its own S_loc on; S_in(r) sums only the states after the last cut before r. Queries of
shard r read S_in(r) only while they are in the shard's first local document and that
document continues the previous shard's (for r = 0: always, it is the row's first document).

Numerical safety: every decay is exp(-slope * n) with n >= 0 (gaps clamped before `exp`,
masked entries zeroed after), so slopes 1e-6..20 give no inf/NaN at any shard length, in the
forward or the gradient. The prefix is an elementwise fp32 weighted sum (never a reduced-
precision matmul), and the correction reads the fp32 state through the input dtype, as the
chunked operator does.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim; J the value-side
head dim of a state; N the shard (all-gathered) axis, local to this file.
"""
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec

from m1jax.ops.linear_attention import _validate, lightning_attention
from m1jax.ops.linear_attention_reference import _matmul, _scale_rows, document_runs

Array = jax.Array
_F32 = jnp.float32

SEQUENCE_AXIS = "sequence"

__all__ = ["SEQUENCE_AXIS", "dividing_axes", "lightning_attention_sp", "sequence_shards"]


def sequence_shards(axis: str = SEQUENCE_AXIS) -> int:
  """How many ways the current abstract mesh (jax.set_mesh) splits `axis`; 1 without a
  mesh, without that axis, or inside a shard_map that already made it manual."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    return 1
  if dict(zip(mesh.axis_names, mesh.axis_types))[axis] == AxisType.Manual:
    return 1
  return mesh.shape[axis]


def dividing_axes(size: int, axes) -> Optional[tuple[str, ...]]:
  """`axes` (mesh axes of the current mesh) if they divide `size`, else None (replicate that
  dimension inside the shard_map: exact, only redundant). For callers that may see odd
  batch sizes, e.g. an eval batch smaller than the data axes."""
  axes = _axes(axes)
  return axes if size % _ways(jax.sharding.get_abstract_mesh(), axes) == 0 else None


def _axes(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def _ways(mesh, axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _prefix_weights(slope_H: Array, m: int, r: Array, cut_NB: Optional[Array], n: int) -> Array:
  """w[j, b, h], j = 0..n: the weight of S_init (j = 0) and of S_loc(j-1) in S_in(r).

  lambda^(m (r-j)) for j <= r, times [no shard u in [j, r) cuts] with segment ids; else 0.
  """
  j_N = jnp.arange(n + 1)
  gap_N = jnp.maximum(r - j_N, 0).astype(_F32)          # clamped before exp: exponent <= 0
  decay_NH = jnp.exp(-slope_H[None, :] * (m * gap_N)[:, None])
  valid_N = j_N <= r
  if cut_NB is None:
    return jnp.where(valid_N[:, None, None], decay_NH[:, None, :], 0.0)
  u_N = jnp.arange(n)
  # between[j, u]: shard u lies in [j, r), so a cut there hides everything before it.
  between_NN = (u_N[None, :] >= j_N[:, None]) & (u_N[None, :] < r)
  cuts_NB = jnp.einsum("ju,ub->jb", between_NN.astype(jnp.int32), cut_NB.astype(jnp.int32))
  keep_NB = valid_N[:, None] & (cuts_NB == 0)
  return jnp.where(keep_NB[:, :, None], decay_NH[:, None, :], 0.0)


def _shard_body(q, k, v, slope_H, state_BHDD, segment_ids_BT, *, axis, n, impl, block_size):
  """One shard's LASP-2 pass; returns its out [B,m,H,D] and end state [1,B,H,D,D]."""
  dtype = q.dtype
  b, m, h, d = q.shape
  r = jax.lax.axis_index(axis)
  out_loc, s_loc_BHDD = lightning_attention(q, k, v, slope_H, impl=impl, block_size=block_size,
                                            segment_ids=segment_ids_BT)
  s_loc_NBHDD = jax.lax.all_gather(s_loc_BHDD, axis)               # the one state collective
  init_BHDD = jnp.zeros((b, h, d, d), _F32) if state_BHDD is None else state_BHDD
  states_NBHDD = jnp.concatenate([init_BHDD[None], s_loc_NBHDD], axis=0)

  if segment_ids_BT is None:
    cut_NB = None
    reads_BT = jnp.ones((b, m), bool)
    cut_B = jnp.zeros((b,), bool)
  else:
    runs_BT = document_runs(segment_ids_BT)
    whole_B = runs_BT[:, -1] == 0                  # no document starts after token 0
    summary_B3 = jnp.stack([segment_ids_BT[:, 0], segment_ids_BT[:, -1],
                            whole_B.astype(segment_ids_BT.dtype)], axis=-1).astype(jnp.int32)
    summary_NB3 = jax.lax.all_gather(summary_B3, axis)
    first_NB, last_NB, whole_NB = summary_NB3[..., 0], summary_NB3[..., 1], summary_NB3[..., 2]
    # Shard u continues the previous shard's last document (shard 0: the initial state's).
    prev_last_NB = jnp.concatenate([first_NB[:1], last_NB[:-1]], axis=0)
    cont_NB = first_NB == prev_last_NB
    cut_NB = ~(cont_NB & (whole_NB == 1))
    cont_B = cont_NB[r]
    cut_B = cut_NB[r]
    reads_BT = (runs_BT == 0) & cont_B[:, None]

  w_NBH = _prefix_weights(slope_H, m, r, cut_NB, n)
  # Elementwise fp32 weighted sum: exact on every backend (a dot could run in bf16 passes).
  s_in_BHDD = jnp.sum(w_NBH[:, :, :, None, None] * states_NBHDD, axis=0)

  pos_T = jnp.arange(m, dtype=_F32)
  q_decay_BTH = jnp.exp(-slope_H[None, None, :] * (pos_T + 1.0)[None, :, None])
  q_decay_BTH = jnp.where(reads_BT[:, :, None], q_decay_BTH, 0.0)
  corr_BTHJ = _matmul("bthd,bhdj->bthj", _scale_rows(q, q_decay_BTH), s_in_BHDD.astype(dtype))
  out_BTHD = (out_loc.astype(_F32) + corr_BTHJ).astype(dtype)

  carry_BH = jnp.where(cut_B[:, None], 0.0, jnp.exp(-slope_H * m)[None, :])
  end_BHDD = carry_BH[:, :, None, None] * s_in_BHDD + s_loc_BHDD
  return out_BTHD, end_BHDD[None]


def lightning_attention_sp(q: Array, k: Array, v: Array, slope: Array, *,
                           initial_state: Optional[Array] = None, impl: str = "auto",
                           block_size: Optional[int] = None,
                           segment_ids: Optional[Array] = None, axis: str = SEQUENCE_AXIS,
                           batch_axes: Sequence[str] | str | None = None,
                           head_axes: Sequence[str] | str | None = None
                           ) -> tuple[Array, Array]:
  """`lightning_attention` with T split over the mesh axis `axis` (LASP-2 with decay).

  Same arguments, results and semantics as `m1jax.ops.lightning_attention`; must be traced
  under a mesh (jax.set_mesh) that has `axis`. batch_axes / head_axes: the mesh axes B and H
  are split over inside the shard_map (default: none, i.e. replicated).

  Raises ValueError (naming both) when T, B or H is not divisible by its mesh axes, and for
  every malformed input `lightning_attention` rejects.
  """
  slope = jnp.asarray(slope)
  segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
  _validate(q, k, v, slope, initial_state, block_size, segment_ids)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or axis not in mesh.axis_names:
    raise ValueError(f"lightning_attention_sp: no mesh axis {axis!r} in the current mesh "
                     f"({dict(mesh.shape) if not mesh.empty else 'none set'}); trace it "
                     "under jax.set_mesh(mesh).")
  batch_axes, head_axes = _axes(batch_axes), _axes(head_axes)
  n = mesh.shape[axis]
  b, t, h, _ = q.shape
  for what, size, axes in (("sequence length T", t, (axis,)), ("batch B", b, batch_axes),
                           ("heads H", h, head_axes)):
    if size % _ways(mesh, axes):
      raise ValueError(f"lightning_attention_sp: {what}={size} (q shape {q.shape}) is not "
                       f"divisible by mesh axes {'·'.join(axes)} = {_ways(mesh, axes)}.")
  batch = batch_axes or None
  heads = head_axes or None
  spec_BTHD = PartitionSpec(batch, axis, heads, None)
  spec_BHDD = PartitionSpec(batch, heads, None, None)

  def body(q, k, v, slope_H, state_BHDD, segment_ids_BT):
    return _shard_body(q, k, v, slope_H, state_BHDD, segment_ids_BT, axis=axis, n=n,
                       impl=impl, block_size=block_size)

  state_BHDD = None if initial_state is None else jnp.asarray(initial_state).astype(_F32)
  in_specs = (spec_BTHD, spec_BTHD, spec_BTHD, PartitionSpec(heads),
              PartitionSpec() if state_BHDD is None else spec_BHDD,  # None: no leaves
              PartitionSpec() if segment_ids is None else PartitionSpec(batch, axis))
  out_specs = (spec_BTHD, PartitionSpec(axis, batch, heads, None, None))
  # check_vma=False: the per-shard operators are not typed for varying manual axes (the
  # chunked scan starts from an unvarying zero carry; Pallas calls carry no vma). Without the
  # check, shard_map's transpose divides replicated outputs' cotangents and psums the
  # cotangents of inputs replicated over an axis (slope, initial_state), which is exact here.
  out, ends_NBHDD = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                                  check_vma=False)(
      q, k, v, slope.astype(_F32), state_BHDD, segment_ids)
  return out, ends_NBHDD[-1]
