"""The Pallas TPU lightning-attention kernels as a differentiable function, and the operator
hooks.

`lightning_attention_tpu` is the public kernel function (validated, differentiable in q, k, v,
slope and initial_state). `operator_impl` is what `m1jax.ops.lightning_attention(...,
impl="pallas_tpu")` calls, and `auto_supported` is the test `impl="auto"` uses to pick the
kernel on TPU. The custom_vjp, validation and hooks are shared with the GPU kernel
(lightning_vjp.py).
"""
from typing import Optional

import jax

from pallas_kernels import lightning_vjp
from pallas_kernels import lightning_tpu
from pallas_kernels.lightning_tpu import BlockSizes, Interpret

Array = jax.Array

_NAME = "lightning_attention_tpu"
_lightning = lightning_vjp.make_custom_vjp(lightning_tpu)


def lightning_attention_tpu(q: Array, k: Array, v: Array, slope: Array, *,
                            initial_state: Optional[Array] = None,
                            block_sizes: Optional[BlockSizes] = None,
                            interpret: Interpret = None,
                            segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
  """Lightning attention (docs/MODEL.md §6.3) with the Pallas TPU kernels, forward and backward.

  Args:
    q, k, v: [B,T,H,D], float32 or bfloat16, D in (64, 128).
    slope: [H] decay rates (decay exp(-slope)); cast to float32.
    initial_state: [B,H,D,D] state (cast to float32), or None for zeros.
    block_sizes: tiling; default `BlockSizes()`.
    interpret: None picks Mosaic when lowered for TPU and interpret mode (with
      `lightning_tpu.DEFAULT_INTERPRET_PARAMS`) elsewhere; False forces Mosaic; a
      `pltpu.InterpretParams` forces interpret mode with those parameters.
    segment_ids: optional int [B,T] ids of packed documents (maximal runs of one id); the
      state resets at each document start, exactly as `m1jax.ops` chunked: initial_state
      feeds each row's first document and final_state is its last document's state.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  return lightning_vjp.call(lightning_tpu, _lightning, _NAME, q, k, v, slope,
                            initial_state, block_sizes, interpret, segment_ids)


operator_impl = lightning_vjp.operator_impl(lightning_tpu, lightning_attention_tpu,
                                            "pallas_tpu")
