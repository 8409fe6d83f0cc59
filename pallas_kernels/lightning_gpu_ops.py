"""The Pallas Mosaic GPU lightning-attention kernels as a differentiable function, and the
operator hooks (`impl="pallas_gpu"`).

The custom_vjp, validation and hooks are lightning_vjp's, shared with the TPU kernel:
both kernels have one contract. The dq kernel recomputes per-chunk states.
"""
from typing import Optional

import jax

from pallas_kernels import lightning_vjp
from pallas_kernels import lightning_gpu
from pallas_kernels.lightning_gpu import BlockSizes, Interpret

Array = jax.Array

_NAME = "lightning_attention_gpu"
_lightning = lightning_vjp.make_custom_vjp(lightning_gpu)


def lightning_attention_gpu(q: Array, k: Array, v: Array, slope: Array, *,
                            initial_state: Optional[Array] = None,
                            block_sizes: Optional[BlockSizes] = None,
                            interpret: Interpret = None,
                            segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
  """Lightning attention (docs/MODEL.md §6.3) with the Pallas Mosaic GPU kernels.

  Args: as `lightning_attention_tpu`; `interpret` None picks Mosaic GPU when lowered for a
  GPU and Mosaic GPU interpret mode elsewhere, False forces Mosaic GPU, an
  `lightning_gpu.InterpretGPUParams` forces interpret mode with those parameters.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  return lightning_vjp.call(lightning_gpu, _lightning, _NAME, q, k, v, slope,
                            initial_state, block_sizes, interpret, segment_ids)


operator_impl = lightning_vjp.operator_impl(lightning_gpu, lightning_attention_gpu,
                                            "pallas_gpu")
