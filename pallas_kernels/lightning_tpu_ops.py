"""custom_vjp around the Pallas TPU lightning-attention kernels, and the operator hook.

`lightning_attention_tpu` is the public kernel function (validated, differentiable in q, k, v,
slope and initial_state). `operator_impl` is what `m1jax.ops.lightning_attention(...,
impl="pallas_tpu")` calls, and `auto_supported` is the test `impl="auto"` uses to pick the
kernel on TPU.

Residuals: q, k, v, slope, the initial and the final state. No per-chunk states are saved;
the dq kernel recomputes them (lightning_tpu.py explains the trade).
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from pallas_kernels import lightning_tpu
from pallas_kernels.lightning_tpu import BlockSizes, Interpret

Array = jax.Array


def make_custom_vjp(kernels):
  """The differentiable kernel call for a module with `forward` and `backward` of
  lightning_tpu's signatures; shared by the TPU and GPU kernels (lightning_gpu_ops)."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
  def lightning(q, k, v, slope_H, state_BHDD, block_sizes, interpret):
    return kernels.forward(q, k, v, slope_H, state_BHDD, block_sizes=block_sizes,
                           interpret=interpret)

  def lightning_fwd(q, k, v, slope_H, state_BHDD, block_sizes, interpret):
    out, final_state = kernels.forward(q, k, v, slope_H, state_BHDD,
                                       block_sizes=block_sizes, interpret=interpret)
    return (out, final_state), (q, k, v, slope_H, state_BHDD, final_state)

  def lightning_bwd(block_sizes, interpret, residuals, cotangents):
    q, k, v, slope_H, state_BHDD, final_state = residuals
    d_out, d_final_state = cotangents
    return kernels.backward(q, k, v, slope_H, state_BHDD, final_state,
                            d_out.astype(q.dtype), d_final_state.astype(jnp.float32),
                            block_sizes=block_sizes, interpret=interpret)

  lightning.defvjp(lightning_fwd, lightning_bwd)
  return lightning


_lightning = make_custom_vjp(lightning_tpu)


def _validate(q, k, v, slope, initial_state, fn: str = "lightning_attention_tpu") -> None:
  """Raises ValueError naming the offending argument (messages start with `fn`)."""
  if q.ndim != 4:
    raise ValueError(f"{fn}: q must have rank 4 [B,T,H,D]; got {q.shape}.")
  if not (q.shape == k.shape == v.shape):
    raise ValueError(f"{fn}: q, k, v must share one [B,T,H,D] shape; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}.")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"{fn}: q, k, v must share one dtype; got "
                     f"q {q.dtype}, k {k.dtype}, v {v.dtype}.")
  if jnp.dtype(q.dtype) not in lightning_tpu.SUPPORTED_DTYPES:
    raise ValueError(f"{fn}: q, k, v dtype must be float32 or bfloat16; "
                     f"got {q.dtype}.")
  b, t, h, d = q.shape
  if d not in lightning_tpu.SUPPORTED_HEAD_DIMS:
    raise ValueError(f"{fn}: head_dim D={d} (q shape {q.shape}) is not "
                     f"supported; the kernel supports {lightning_tpu.SUPPORTED_HEAD_DIMS}. "
                     "Use impl='chunked' (or 'auto') for other head dims.")
  if jnp.shape(slope) != (h,):
    raise ValueError(f"{fn}: slope must have shape [H]=({h},) for q of "
                     f"shape {q.shape}; got {jnp.shape(slope)}.")
  if initial_state is not None and jnp.shape(initial_state) != (b, h, d, d):
    raise ValueError(f"{fn}: initial_state must have shape "
                     f"[B,H,D,D]={(b, h, d, d)}; got {jnp.shape(initial_state)}.")


def lightning_attention_tpu(q: Array, k: Array, v: Array, slope: Array, *,
                            initial_state: Optional[Array] = None,
                            block_sizes: Optional[BlockSizes] = None,
                            interpret: Interpret = None) -> tuple[Array, Array]:
  """Lightning attention (SPEC.md §3.3) with the Pallas TPU kernels, forward and backward.

  Args:
    q, k, v: [B,T,H,D], float32 or bfloat16, D in (64, 128).
    slope: [H] decay rates (decay exp(-slope)); cast to float32.
    initial_state: [B,H,D,D] state (cast to float32), or None for zeros.
    block_sizes: tiling; default `BlockSizes()`.
    interpret: None picks Mosaic when lowered for TPU and interpret mode (with
      `lightning_tpu.DEFAULT_INTERPRET_PARAMS`) elsewhere; False forces Mosaic; a
      `pltpu.InterpretParams` forces interpret mode with those parameters.

  Returns:
    out: [B,T,H,D] in q.dtype; final_state: [B,H,D,D] float32.
  """
  _validate(q, k, v, slope, initial_state)
  b, t, h, d = q.shape
  slope_H = jnp.asarray(slope).astype(jnp.float32)
  if initial_state is None:
    state_BHDD = jnp.zeros((b, h, d, d), jnp.float32)
  else:
    state_BHDD = jnp.asarray(initial_state).astype(jnp.float32)
  if t == 0:
    # No chunks to run; the state passes through unchanged.
    return q, state_BHDD
  return _lightning(q, k, v, slope_H, state_BHDD, block_sizes or BlockSizes(), interpret)


def operator_impl(q, k, v, slope_H, state_BHDD, block_size, **unsupported):
  """`m1jax.ops.IMPLEMENTATIONS["pallas_tpu"]`: the operator's calling convention."""
  for name, value in unsupported.items():
    if value is not None:
      raise ValueError(f"lightning_attention: impl='pallas_tpu' does not support {name}; "
                       "use impl='chunked'.")
  block_sizes = BlockSizes() if block_size is None else BlockSizes(block_t=int(block_size))
  return lightning_attention_tpu(q, k, v, slope_H, initial_state=state_BHDD,
                                 block_sizes=block_sizes)


def auto_supported(q, k, v, slope, initial_state=None, block_size=None, **unsupported) -> bool:
  """True when `impl="auto"` should use the kernel: on a TPU backend, for shapes it handles."""
  del block_size
  if any(value is not None for value in unsupported.values()):
    return False
  if jax.default_backend() != "tpu":
    return False
  try:
    _validate(q, k, v, slope, initial_state)
  except ValueError:
    return False
  return q.shape[1] > 0
