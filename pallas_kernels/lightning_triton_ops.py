"""The Pallas-Triton lightning-attention kernels as a differentiable function, and the
operator hook (`impl="pallas_triton"`).

The custom_vjp and validation are lightning_vjp's, shared with the TPU and Mosaic GPU
kernels: every kernel has one contract.
"""
from typing import Optional

import jax

from pallas_kernels import lightning_triton
from pallas_kernels import lightning_vjp
from pallas_kernels.lightning_triton import BlockSizes, Interpret

Array = jax.Array

_NAME = "lightning_attention_triton"
_lightning = lightning_vjp.make_custom_vjp(lightning_triton)


def lightning_attention_triton(q: Array, k: Array, v: Array, slope: Array, *,
                               initial_state: Optional[Array] = None,
                               block_sizes: Optional[BlockSizes] = None,
                               interpret: Interpret = None,
                               segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
  """Lightning attention (docs/MODEL.md §6.3) with the Pallas-Triton kernels.

  Args: as `lightning_attention_tpu`; block_sizes' chunk and split must be powers of two
  >= 16; `interpret` None picks Triton when lowered for a GPU and interpret mode elsewhere,
  False forces Triton, True forces interpret mode.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  return lightning_vjp.call(lightning_triton, _lightning, _NAME, q, k, v, slope,
                            initial_state, block_sizes, interpret, segment_ids)


operator_impl = lightning_vjp.operator_impl(lightning_triton, lightning_attention_triton,
                                            "pallas_triton")
