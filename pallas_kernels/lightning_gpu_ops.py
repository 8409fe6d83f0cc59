"""custom_vjp around the Pallas Mosaic GPU lightning-attention kernels, and the operator hook.

The custom_vjp and the input validation are lightning_tpu_ops' (`make_custom_vjp`,
`_validate`), shared rather than copied: both kernels have one contract. Residuals are
q, k, v, slope and the initial and final states; the dq kernel recomputes per-chunk states.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels import lightning_gpu
from pallas_kernels import lightning_tpu_ops
from pallas_kernels.lightning_gpu import BlockSizes, Interpret

Array = jax.Array

_NAME = "lightning_attention_gpu"
_lightning = lightning_tpu_ops.make_custom_vjp(lightning_gpu)

# Backends on which `impl="auto"` picks this kernel (jax names CUDA devices "gpu").
GPU_BACKENDS = ("gpu", "cuda")


def lightning_attention_gpu(q: Array, k: Array, v: Array, slope: Array, *,
                            initial_state: Optional[Array] = None,
                            block_sizes: Optional[BlockSizes] = None,
                            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention (SPEC.md §3.3) with the Pallas Mosaic GPU kernels.

  Args: as `lightning_attention_tpu`; `interpret` None picks Mosaic GPU when lowered for a
  GPU and Mosaic GPU interpret mode elsewhere, False forces Mosaic GPU, an
  `lightning_gpu.InterpretGPUParams` forces interpret mode with those parameters.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  lightning_tpu_ops._validate(q, k, v, slope, initial_state, fn=_NAME)  # pylint: disable=protected-access
  b, t, h, d = q.shape
  slope_H = jnp.asarray(slope).astype(jnp.float32)
  if initial_state is None:
    state_BHDD = jnp.zeros((b, h, d, d), jnp.float32)
  else:
    state_BHDD = jnp.asarray(initial_state).astype(jnp.float32)
  if t == 0:
    return q, state_BHDD
  return _lightning(q, k, v, slope_H, state_BHDD, block_sizes or BlockSizes(), interpret)


def operator_impl(q, k, v, slope_H, state_BHDD, block_size, **unsupported):
  """`m1jax.ops.IMPLEMENTATIONS["pallas_gpu"]`: the operator's calling convention."""
  for name, value in unsupported.items():
    if value is not None:
      raise ValueError(f"lightning_attention: impl='pallas_gpu' does not support {name}; "
                       "use impl='chunked'.")
  block_sizes = BlockSizes() if block_size is None else BlockSizes(block_t=int(block_size))
  return lightning_attention_gpu(q, k, v, slope_H, initial_state=state_BHDD,
                                 block_sizes=block_sizes)


def auto_supported(q, k, v, slope, initial_state=None, block_size=None, **unsupported) -> bool:
  """True when `impl="auto"` should use the kernel: on a GPU backend, for shapes it handles."""
  del block_size
  if any(value is not None for value in unsupported.values()):
    return False
  if jax.default_backend() not in GPU_BACKENDS:
    return False
  try:
    lightning_tpu_ops._validate(q, k, v, slope, initial_state, fn=_NAME)  # pylint: disable=protected-access
  except ValueError:
    return False
  return q.shape[1] > 0
