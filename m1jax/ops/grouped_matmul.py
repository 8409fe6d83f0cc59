"""Grouped matmul: rows sorted by group, each group multiplied by its own weight matrix.

    out[a] = lhs[a] @ rhs[g(a)]     lhs [A, K], rhs [G, K, N], group_sizes [G] (sum <= A)

The one place the MoE's expert matmuls go through (local dispatch and expert parallelism
alike), so a per-platform kernel replaces it everywhere at once.
"""
import jax

GROUPED_MATMUL_IMPLS = ("ragged_dot",)


def grouped_matmul(lhs_AK: jax.Array, rhs_GKN: jax.Array, group_sizes_G: jax.Array,
                   impl: str = "ragged_dot") -> jax.Array:
  """[A, K] x [G, K, N] -> [A, N]; rows past sum(group_sizes) come out zero."""
  if impl not in GROUPED_MATMUL_IMPLS:
    raise ValueError(f"grouped_matmul impl={impl!r}; expected one of {GROUPED_MATMUL_IMPLS}")
  return jax.lax.ragged_dot(lhs_AK, rhs_GKN, group_sizes_G)
