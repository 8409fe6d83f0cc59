"""Grouped matmul on TPU: JAX's Pallas megablox `gmm` (its own custom_vjp runs `gmm` with the
transposed weights for d(lhs) and `tgmm` for d(weights)).

What this wrapper adds to jax.experimental.pallas.ops.tpu.megablox.ops.gmm (jax 0.11.2):
  * rows are padded to a multiple of the row tile (gmm requires A % tm == 0);
  * rows past sum(group_sizes) come out zero, as ragged_dot's do: gmm leaves them
    uninitialised (NaN in interpret mode), and its backward leaves d(lhs) there
    uninitialised too, so both the input and the output are masked;
  * a tiling that fits any shape: a dimension up to MAX_TILE is one full-width tile (Mosaic
    accepts a block equal to the array dim), a larger one is cut in MAX_TILE tiles (a multiple
    of 128; gmm masks a ragged last tile).
Dimension letters as in m1jax/ops/grouped_matmul_chunked.py.
"""
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.megablox import ops as megablox

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
  A, M = x_AM.shape
  F = w_EMF.shape[-1]
  P = padded_rows(A)
  sizes_E = group_sizes_E.astype(jnp.int32)
  valid_A = jnp.arange(A) < jnp.sum(sizes_E)
  x_PM = jnp.pad(jnp.where(valid_A[:, None], x_AM, 0), ((0, P - A), (0, 0)))
  y_PF = megablox.gmm(x_PM, w_EMF, sizes_E, x_AM.dtype, tiling(P, M, F), None, None, False,
                      interpret)
  return jnp.where(valid_A[:, None], y_PF[:A], 0)
