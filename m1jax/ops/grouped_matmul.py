"""Grouped matmul: rows sorted by group (expert), each group multiplied by its own matrix.

    out[a] = x[a] @ w[e(a)]     x [A, M], w [E, M, F], group_sizes [E] (sum <= A)

The one place the MoE's expert matmuls go through (local dispatch and expert parallelism
alike), so a per-platform kernel replaces it everywhere at once. Implementations (all exact
and dropless; rows past sum(group_sizes) come out zero):

  ragged_dot  jax.lax.ragged_dot; runs everywhere. The GPU choice.
  chunked     m1jax.ops.grouped_matmul_chunked: expert-aligned chunks, one batched matmul;
              runs everywhere. The CPU choice (XLA:CPU's ragged_dot is ~10x slower than a
              dense matmul of the same FLOPs).
  megablox    m1jax.ops.grouped_matmul_megablox: Pallas megablox gmm/tgmm; TPU only,
              float32/bfloat16.
  auto        megablox on TPU, ragged_dot on GPU, chunked on CPU (measured:
              experiments/bench_moe.py, WORKSPACE_NOTES.md "MoE grouped matmul").

The platform is the one being compiled FOR (an AOT compile for TPU from a CPU host picks the
TPU kernel), as for attention_impl.
"""
import jax
import jax.numpy as jnp

from m1jax.ops.attention_impl import lowering_platform
from m1jax.ops.grouped_matmul_chunked import grouped_matmul_chunked
from m1jax.ops.grouped_matmul_megablox import DTYPES as MEGABLOX_DTYPES
from m1jax.ops.grouped_matmul_megablox import grouped_matmul_megablox

GROUPED_MATMUL_IMPLS = ("auto", "ragged_dot", "chunked", "megablox")
# The measured-fastest exact path per platform; any other platform gets ragged_dot.
AUTO = {"tpu": "megablox", "gpu": "ragged_dot", "cpu": "chunked"}


def runnable(platform: str, dtype) -> tuple[str, ...]:
  """The concrete implementations that can run on `platform` for operands of `dtype`."""
  megablox = platform == "tpu" and jnp.dtype(dtype) in MEGABLOX_DTYPES
  return ("ragged_dot", "chunked") + (("megablox",) if megablox else ())


# megablox's TPU tiles: the weight's two matrix dims must be multiples of the 128-lane tile
# (a 64-wide F fails Pallas TPU lowering), so "auto" takes it only for such weights.
MEGABLOX_TILE = 128


def _tiles(w_shape) -> bool:
  return w_shape is None or all(d % MEGABLOX_TILE == 0 for d in w_shape[-2:])


def resolve(impl: str, dtype, platform: str | None = None, w_shape=None) -> str:
  """The concrete implementation for `impl`; ValueError (naming what can run) when the
  platform or dtype cannot run it. `w_shape` ([E, M, F]): megablox needs M and F multiples
  of 128 to compile for a TPU (interpret mode takes any shape); "auto" falls back to
  ragged_dot otherwise (fail-closed)."""
  if impl not in GROUPED_MATMUL_IMPLS:
    raise ValueError(f"grouped matmul impl={impl!r} is unknown; valid: "
                     f"{', '.join(GROUPED_MATMUL_IMPLS)}")
  platform = platform or lowering_platform()
  can_run = runnable(platform, dtype)
  if impl == "auto":
    choice = AUTO.get(platform, "ragged_dot")
    if choice == "megablox" and not _tiles(w_shape):
      return "ragged_dot"
    return choice if choice in can_run else "ragged_dot"
  if impl not in can_run:
    raise ValueError(f"grouped matmul impl={impl!r} cannot run on platform {platform!r} with "
                     f"dtype {jnp.dtype(dtype).name} (megablox: TPU, float32/bfloat16); what "
                     f"can run here: {', '.join(can_run)} (or 'auto')")
  return impl


def grouped_matmul(x_AM: jax.Array, w_EMF: jax.Array, group_sizes_E: jax.Array,
                   impl: str = "auto") -> jax.Array:
  """[A, M] x [E, M, F] -> [A, F]; rows past sum(group_sizes) come out zero."""
  impl = resolve(impl, x_AM.dtype, w_shape=w_EMF.shape)
  if impl == "megablox":
    return grouped_matmul_megablox(x_AM, w_EMF, group_sizes_E)
  if impl == "chunked":
    return grouped_matmul_chunked(x_AM, w_EMF, group_sizes_E)
  return jax.lax.ragged_dot(x_AM, w_EMF, group_sizes_E)
