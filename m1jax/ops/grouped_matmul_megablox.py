"""Grouped matmul on TPU: JAX's Pallas megablox `gmm` (its own custom_vjp runs `gmm` with the
transposed weights for d(lhs) and `tgmm` for d(weights)).

What this wrapper adds to jax.experimental.pallas.ops.tpu.megablox.ops.gmm (jax 0.11.2):
  * rows are padded to a multiple of the row tile (gmm requires A % tm == 0);
  * rows past sum(group_sizes) come out zero, as ragged_dot's do: gmm leaves them
    uninitialised (NaN in interpret mode), and its backward leaves d(lhs) there
    uninitialised too, so both the input and the output are masked;
  * a tiling that fits any shape: a dimension up to MAX_TILE is one full-width tile (Mosaic
    accepts a block equal to the array dim), a larger one is cut in MAX_TILE tiles (a multiple
    of 128; gmm masks a ragged last tile);
  * a multi-device mesh: Mosaic kernels cannot be partitioned automatically ("wrap the call
    in a shard_map"), so on a mesh whose axes are not all manual already (expert parallelism
    calls from inside its own shard_map) the sorted rows are split in contiguous blocks over
    the remaining axes, each device running gmm on its block with the block's own group
    sizes and every expert's weights (gathered at the shard_map entry, as FSDP gathers them
    for any matmul; the weights' gradient is summed over the blocks by the shard_map).
Dimension letters as in m1jax/ops/grouped_matmul_chunked.py.
"""
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox
from jax.sharding import PartitionSpec

# Tile edge for M and F (and the row tile cap). 512 keeps the [tm, tk] + [tk, tn] bf16 blocks
# and the fp32 [tm, tn] accumulator at 1.5 MiB, well inside every TPU generation's VMEM.
MAX_TILE = 512
ROW_ALIGN = 16  # a bf16 row tile must be a multiple of 16 sublanes (8 for fp32)
DTYPES = (jnp.float32, jnp.bfloat16)


def tiling(rows: int, m: int, f: int) -> tuple[int, int, int]:
  """(tm, tk, tn) for gmm on [rows, m] x [E, m, f]; rows is already a multiple of tm."""
  tm = min(MAX_TILE, rows)
  return tm, min(MAX_TILE, m), min(MAX_TILE, f)


def padded_rows(rows: int) -> int:
  """Rows rounded up to ROW_ALIGN, then to a multiple of the row tile."""
  rows = -(-rows // ROW_ALIGN) * ROW_ALIGN
  tm = min(MAX_TILE, rows)
  return -(-rows // tm) * tm


def grouped_matmul_megablox(x_AM: jax.Array, w_EMF: jax.Array, group_sizes_E: jax.Array,
                            interpret: bool = False) -> jax.Array:
  """[A, M] x [E, M, F] -> [A, F] with megablox gmm; `interpret` runs the kernel in Pallas
  interpret mode (any backend: tests on CPU)."""
  if x_AM.dtype not in DTYPES or w_EMF.dtype != x_AM.dtype:
    raise ValueError(f"megablox grouped matmul needs float32 or bfloat16 operands of one "
                     f"dtype; got x {x_AM.dtype}, w {w_EMF.dtype}")
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(a for a in mesh.axis_names if a not in mesh.manual_axes)
  ways = math.prod(mesh.shape[a] for a in axes)
  sizes_E = group_sizes_E.astype(jnp.int32)
  if ways == 1:
    return _local(x_AM, w_EMF, sizes_E, interpret)
  A = x_AM.shape[0]
  block = -(-A // ways)
  ends_E = jnp.cumsum(sizes_E)

  def rows_block(x_BM, w_EMF, ends_E, sizes_E):
    # Block b holds sorted rows [b*block, (b+1)*block): each group's overlap with it, in order.
    first = jax.lax.axis_index(axes) * block
    local_E = (jnp.clip(ends_E - first, 0, block)
               - jnp.clip(ends_E - sizes_E - first, 0, block))
    return _local(x_BM, w_EMF, local_E, interpret)

  rows = PartitionSpec(axes)
  x_AM = jnp.pad(x_AM, ((0, block * ways - A), (0, 0)))
  y_AF = jax.shard_map(rows_block, mesh=mesh, in_specs=(rows, PartitionSpec(), PartitionSpec(),
                                                        PartitionSpec()),
                       out_specs=rows, axis_names=set(axes), check_vma=False)(
                           x_AM, w_EMF, ends_E, sizes_E)
  return y_AF[:A]


def _local(x_AM: jax.Array, w_EMF: jax.Array, sizes_E: jax.Array, interpret: bool) -> jax.Array:
  """One device's gmm over all of x's rows."""
  A, M = x_AM.shape
  F = w_EMF.shape[-1]
  P = padded_rows(A)
  valid_A = jnp.arange(A) < jnp.sum(sizes_E)
  x_PM = jnp.pad(jnp.where(valid_A[:, None], x_AM, 0), ((0, P - A), (0, 0)))
  y_PF = megablox.gmm(x_PM, w_EMF, sizes_E, x_AM.dtype, tiling(P, M, F), None, None, False,
                      interpret)
  return jnp.where(valid_A[:, None], y_PF[:A], 0)
