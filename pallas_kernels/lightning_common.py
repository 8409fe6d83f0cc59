"""What the TPU and GPU lightning kernels share: the custom_vjp, input validation, the
public-call preamble and the `m1jax.ops` hooks. Each kernel module (lightning_tpu,
lightning_gpu) provides `forward`, `backward`, `BlockSizes`, `SUPPORTED_DTYPES` and
`SUPPORTED_HEAD_DIMS`; its *_ops module binds them here.

Residuals of the custom_vjp: q, k, v, slope, the initial and the final state. No per-chunk
states are saved; the dq kernels recompute them (lightning_tpu.py explains the trade).
"""
import functools
from types import ModuleType
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array


def make_custom_vjp(kernels: ModuleType) -> Callable:
  """The differentiable kernel call for a module with `forward` and `backward`."""

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


def validate(kernels: ModuleType, fn: str, q, k, v, slope, initial_state) -> None:
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


def call(kernels: ModuleType, lightning: Callable, fn: str, q, k, v, slope,
         initial_state: Optional[Array], block_sizes, interpret):
  """Validates, casts slope and state to float32, and runs the differentiable kernel."""
  validate(kernels, fn, q, k, v, slope, initial_state)
  b, t, h, d = q.shape
  slope_H = jnp.asarray(slope).astype(jnp.float32)
  if initial_state is None:
    state_BHDD = jnp.zeros((b, h, d, d), jnp.float32)
  else:
    state_BHDD = jnp.asarray(initial_state).astype(jnp.float32)
  if t == 0:
    # No chunks to run; the state passes through unchanged.
    return q, state_BHDD
  return lightning(q, k, v, slope_H, state_BHDD, block_sizes or kernels.BlockSizes(),
                   interpret)


def operator_hooks(kernels: ModuleType, public_fn: Callable, impl: str, fn: str,
                   backends: Sequence[str]) -> tuple[Callable, Callable]:
  """(operator_impl, auto_supported) for `m1jax.ops`: the operator's calling convention,
  and the test `impl="auto"` uses to pick the kernel on `backends`."""

  def operator_impl(q, k, v, slope_H, state_BHDD, block_size, **unsupported):
    for name, value in unsupported.items():
      if value is not None:
        raise ValueError(f"lightning_attention: impl={impl!r} does not support {name}; "
                         "use impl='chunked'.")
    block_sizes = (kernels.BlockSizes() if block_size is None
                   else kernels.BlockSizes(block_t=int(block_size)))
    return public_fn(q, k, v, slope_H, initial_state=state_BHDD, block_sizes=block_sizes)

  def auto_supported(q, k, v, slope, initial_state=None, block_size=None,
                     **unsupported) -> bool:
    del block_size
    if any(value is not None for value in unsupported.values()):
      return False
    if jax.default_backend() not in backends:
      return False
    try:
      validate(kernels, fn, q, k, v, slope, initial_state)
    except ValueError:
      return False
    return q.shape[1] > 0

  return operator_impl, auto_supported
