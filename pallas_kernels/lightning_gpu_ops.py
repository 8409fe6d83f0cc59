"""The Pallas Mosaic GPU lightning-attention kernels as a differentiable function, and the
operator hooks (`impl="pallas_gpu"`).

The custom_vjp, validation and hooks are lightning_common's, shared with the TPU kernel:
both kernels have one contract. The dq kernel recomputes per-chunk states.
"""
from typing import Optional

import jax

from pallas_kernels import lightning_common
from pallas_kernels import lightning_gpu
from pallas_kernels.lightning_gpu import BlockSizes, Interpret

Array = jax.Array

_NAME = "lightning_attention_gpu"
_lightning = lightning_common.make_custom_vjp(lightning_gpu)

# Backends on which `impl="auto"` picks this kernel (jax names CUDA devices "gpu").
GPU_BACKENDS = ("gpu", "cuda")


def lightning_attention_gpu(q: Array, k: Array, v: Array, slope: Array, *,
                            initial_state: Optional[Array] = None,
                            block_sizes: Optional[BlockSizes] = None,
                            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention (docs/MODEL.md §6.3) with the Pallas Mosaic GPU kernels.

  Args: as `lightning_attention_tpu`; `interpret` None picks Mosaic GPU when lowered for a
  GPU and Mosaic GPU interpret mode elsewhere, False forces Mosaic GPU, an
  `lightning_gpu.InterpretGPUParams` forces interpret mode with those parameters.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  return lightning_common.call(lightning_gpu, _lightning, _NAME, q, k, v, slope,
                               initial_state, block_sizes, interpret)


operator_impl, auto_supported = lightning_common.operator_hooks(
    lightning_gpu, lightning_attention_gpu, impl="pallas_gpu", fn=_NAME, backends=GPU_BACKENDS)
