"""The custom_vjp that makes every lightning kernel differentiable, its input validation,
the public-call preamble and the `m1jax.ops` operator hook. Each kernel module
(lightning_tpu, lightning_gpu, lightning_triton) provides `forward`, `backward`,
`BlockSizes`, `SUPPORTED_DTYPES` and `SUPPORTED_HEAD_DIMS`; its *_ops module binds them here.

Residuals of the custom_vjp: q, k, v, slope, the initial and the final state, and the
document starts of packed rows. No per-chunk states are saved; the dq kernels recompute them
(lightning_tpu.py explains the trade).
"""
import functools
from types import ModuleType
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from pallas_kernels import lightning_chunk

Array = jax.Array


def make_custom_vjp(kernels: ModuleType) -> Callable:
  """The differentiable kernel call for a module with `forward` and `backward`."""

  # doc_start_BT (int32 [B,T] or None) is an ordinary argument so it can be traced; its
  # cotangent is None (integers have none).
  @functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
  def lightning(q, k, v, slope_H, state_BHDD, doc_start_BT, block_sizes, interpret):
    return kernels.forward(q, k, v, slope_H, state_BHDD, doc_start_BT,
                           block_sizes=block_sizes, interpret=interpret)

  def lightning_fwd(q, k, v, slope_H, state_BHDD, doc_start_BT, block_sizes, interpret):
    out, final_state = kernels.forward(q, k, v, slope_H, state_BHDD, doc_start_BT,
                                       block_sizes=block_sizes, interpret=interpret)
    return (out, final_state), (q, k, v, slope_H, state_BHDD, final_state, doc_start_BT)

  def lightning_bwd(block_sizes, interpret, residuals, cotangents):
    q, k, v, slope_H, state_BHDD, final_state, doc_start_BT = residuals
    d_out, d_final_state = cotangents
    grads = kernels.backward(q, k, v, slope_H, state_BHDD, final_state,
                             d_out.astype(q.dtype), d_final_state.astype(jnp.float32),
                             doc_start_BT, block_sizes=block_sizes, interpret=interpret)
    return (*grads, None)

  lightning.defvjp(lightning_fwd, lightning_bwd)
  return lightning


def validate(kernels: ModuleType, fn: str, q, k, v, slope, initial_state,
             segment_ids=None) -> None:
  """Raises ValueError naming the offending argument (messages start with `fn`)."""
  if q.ndim != 4:
    raise ValueError(f"{fn}: q must have rank 4 [B,T,H,D]; got {q.shape}.")
  if not (q.shape == k.shape == v.shape):
    raise ValueError(f"{fn}: q, k, v must share one [B,T,H,D] shape; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}.")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"{fn}: q, k, v must share one dtype; got "
                     f"q {q.dtype}, k {k.dtype}, v {v.dtype}.")
  if jnp.dtype(q.dtype) not in kernels.SUPPORTED_DTYPES:
    raise ValueError(f"{fn}: q, k, v dtype must be float32 or bfloat16; "
                     f"got {q.dtype}.")
  b, t, h, d = q.shape
  if d not in kernels.SUPPORTED_HEAD_DIMS:
    raise ValueError(f"{fn}: head_dim D={d} (q shape {q.shape}) is not "
                     f"supported; the kernel supports {kernels.SUPPORTED_HEAD_DIMS}. "
                     "Use impl='chunked' (or 'auto') for other head dims.")
  if jnp.shape(slope) != (h,):
    raise ValueError(f"{fn}: slope must have shape [H]=({h},) for q of "
                     f"shape {q.shape}; got {jnp.shape(slope)}.")
  if initial_state is not None and jnp.shape(initial_state) != (b, h, d, d):
    raise ValueError(f"{fn}: initial_state must have shape "
                     f"[B,H,D,D]={(b, h, d, d)}; got {jnp.shape(initial_state)}.")
  if segment_ids is not None and (
      jnp.shape(segment_ids) != (b, t)
      or not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer)):
    raise ValueError(f"{fn}: segment_ids must be int [B,T]={(b, t)}; got "
                     f"{jnp.result_type(segment_ids)}{list(jnp.shape(segment_ids))}.")


def call(kernels: ModuleType, lightning: Callable, fn: str, q, k, v, slope,
         initial_state: Optional[Array], block_sizes, interpret, segment_ids=None):
  """Validates, casts slope and state to float32, and runs the differentiable kernel."""
  validate(kernels, fn, q, k, v, slope, initial_state, segment_ids)
  block_sizes = block_sizes or kernels.BlockSizes()
  check_block_sizes = getattr(kernels, "check_block_sizes", None)
  if check_block_sizes is not None:
    check_block_sizes(fn, block_sizes)
  b, t, h, d = q.shape
  slope_H = jnp.asarray(slope).astype(jnp.float32)
  if initial_state is None:
    state_BHDD = jnp.zeros((b, h, d, d), jnp.float32)
  else:
    state_BHDD = jnp.asarray(initial_state).astype(jnp.float32)
  if t == 0:
    # No chunks to run; the state passes through unchanged.
    return q, state_BHDD
  doc_start_BT = (None if segment_ids is None
                  else lightning_chunk.doc_starts(jnp.asarray(segment_ids)))
  return lightning(q, k, v, slope_H, state_BHDD, doc_start_BT, block_sizes, interpret)


def operator_impl(kernels: ModuleType, public_fn: Callable, impl: str) -> Callable:
  """What `m1jax.ops.lightning_attention(impl=impl)` calls: the operator's convention
  (validated q, k, v, float32 slope and state or None, block_size, segment_ids)."""

  def run(q, k, v, slope_H, state_BHDD, block_size, segment_ids=None):
    block_sizes = (kernels.BlockSizes() if block_size is None
                   else kernels.BlockSizes().with_chunk(int(block_size)))
    return public_fn(q, k, v, slope_H, initial_state=state_BHDD, block_sizes=block_sizes,
                     segment_ids=segment_ids)

  run.__name__ = f"{impl}_operator"
  return run
