"""Grouped matmul as one batched matmul over group-aligned row chunks (the fast CPU path).

XLA:CPU runs `jax.lax.ragged_dot` about 10x slower than a dense matmul of the same FLOPs
(issue 16), while its batched dense matmul is fast. So the sorted rows are copied into chunks
of C rows, each expert's rows starting on a fresh chunk; every chunk then holds rows of one
expert only and the grouped matmul is one [Z, C, M] x [Z, M, F] batched matmul against the
per-chunk weights w[chunk_expert_Z]. Dropless and exact: Z = ceil(A/C) + E is a static
upper bound on sum_e ceil(size_e / C), so no row is ever cut; only zero padding rows are added
(fewer than (E+1)*C). Plain JAX ops, so autodiff gives the backward (the gathers become
scatter-adds, the batched matmul transposes, w's gradient is summed over its chunks).

Dimension letters (docs/MODEL.md §2): A sorted rows (assignments), E experts (the groups),
M the contracted width, F the output width (swapped for the down projection), C chunk length,
Z number of chunks. The layout is built once per dispatch (`chunk_layout`), so a SwiGLU's three
matmuls share it: to_chunks -> chunked_matmul x3 -> from_chunks.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Upper bound on the chunk length C, measured at the issue shape (A 16384, M = F = 256, E 8;
# experiments/bench_moe.py, WORKSPACE_NOTES.md "MoE grouped matmul").
MAX_CHUNK = 256
MIN_CHUNK = 8


def chunk_size(rows: int, experts: int) -> int:
  """C: a power of two in [MIN_CHUNK, MAX_CHUNK] keeping the padding bound E*C near rows/4, so
  a tiny call (a few dozen rows) does not pay a 256-row chunk per expert."""
  target = max(rows // (4 * experts), 1)
  return int(min(MAX_CHUNK, max(MIN_CHUNK, 1 << (target.bit_length() - 1))))


class ChunkLayout(NamedTuple):
  """source_ZC: the sorted row each chunk slot holds (A for a padding slot).
  dest_A:       each sorted row's flat chunk slot z*C + c (Z*C for rows past sum(sizes)).
  expert_Z:     the expert whose weights chunk z multiplies."""
  source_ZC: jax.Array
  dest_A: jax.Array
  expert_Z: jax.Array


def chunk_layout(group_sizes_E: jax.Array, rows: int, chunk: int | None = None) -> ChunkLayout:
  """Layout of `rows` sorted rows (experts contiguous, in order) in expert-aligned chunks."""
  E = group_sizes_E.shape[0]
  C = chunk_size(rows, E) if chunk is None else chunk
  Z = -(-rows // C) + E
  sizes_E = group_sizes_E.astype(jnp.int32)
  ends_E = jnp.cumsum(sizes_E)
  starts_E = ends_E - sizes_E
  chunks_E = (sizes_E + C - 1) // C
  chunk_ends_E = jnp.cumsum(chunks_E)
  slot_starts_E = (chunk_ends_E - chunks_E) * C
  # Chunk z belongs to the first expert whose chunk range ends after z (empty experts own no
  # chunk); the chunks past the last expert's are zero padding, clipped onto expert E-1.
  # searchsorted by "compare_all" (E compares per query, vectorised): the default "scan" is a
  # while loop of log2(E) steps, which made a batch-64 decode step 1.5x slower on XLA:CPU and
  # the on-device decode loop slower still (WORKSPACE_NOTES.md, issue 16, decode loop).
  expert_Z = jnp.minimum(jnp.searchsorted(chunk_ends_E, jnp.arange(Z, dtype=jnp.int32),
                                          side="right", method="compare_all"),
                         E - 1).astype(jnp.int32)
  slot_ZC = jnp.arange(Z * C, dtype=jnp.int32).reshape(Z, C)
  offset_ZC = slot_ZC - slot_starts_E[expert_Z][:, None]
  source_ZC = jnp.where(offset_ZC < sizes_E[expert_Z][:, None],
                        starts_E[expert_Z][:, None] + offset_ZC, rows)
  a_A = jnp.arange(rows, dtype=jnp.int32)
  expert_A = jnp.minimum(jnp.searchsorted(ends_E, a_A, side="right", method="compare_all"),
                         E - 1)
  dest_A = jnp.where(a_A < ends_E[-1], slot_starts_E[expert_A] + a_A - starts_E[expert_A], Z * C)
  return ChunkLayout(source_ZC, dest_A, expert_Z)


def to_chunks(x_AM: jax.Array, layout: ChunkLayout) -> jax.Array:
  """[A, M] sorted rows -> [Z, C, M] chunks (padding rows zero)."""
  return jnp.take(x_AM, layout.source_ZC, axis=0, mode="fill", fill_value=0)


def from_chunks(y_ZCF: jax.Array, layout: ChunkLayout) -> jax.Array:
  """[Z, C, F] chunks -> [A, F] sorted rows (rows past sum(group_sizes) zero)."""
  y_F = y_ZCF.reshape(-1, y_ZCF.shape[-1])
  return jnp.take(y_F, layout.dest_A, axis=0, mode="fill", fill_value=0)


def chunked_matmul(x_ZCM: jax.Array, w_EMF: jax.Array, layout: ChunkLayout) -> jax.Array:
  """Each chunk times its expert's matrix: [Z, C, M] x [E, M, F] -> [Z, C, F]."""
  return jnp.einsum("zcm,zmf->zcf", x_ZCM, w_EMF[layout.expert_Z])


def grouped_matmul_chunked(x_AM: jax.Array, w_EMF: jax.Array, group_sizes_E: jax.Array,
                           chunk: int | None = None) -> jax.Array:
  """[A, M] x [E, M, F] -> [A, F] through one expert-aligned batched matmul."""
  layout = chunk_layout(group_sizes_E, x_AM.shape[0], chunk)
  return from_chunks(chunked_matmul(to_chunks(x_AM, layout), w_EMF, layout), layout)
