"""RMSNorm in float32 (docs/MODEL.md §4.2)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.layers import params as lp


def rms_normalize(x: jax.Array, eps: float, num_axes: int = 1) -> jax.Array:
  """x * rsqrt(mean(x^2) + eps) over the trailing `num_axes` axes, in float32."""
  x32 = x.astype(jnp.float32)
  axes = tuple(range(-num_axes, 0))
  variance = jnp.mean(jnp.square(x32), axis=axes, keepdims=True)
  return x32 * jax.lax.rsqrt(variance + eps)


class RMSNorm(nn.Module):
  """y = weight * cast(normalize_fp32(x), x.dtype), over the trailing len(axes) axes.

  The cast back to the input dtype before the weight multiply follows the reference
  (MiniMaxM1RMSNorm); `axes` are the weight's logical names, e.g. (embed,) or
  (heads, head_dim) for the lightning norm that spans all H*D features jointly.
  """
  eps: float
  axes: Sequence[str] = (lp.EMBED,)
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n = len(self.axes)
    weight = lp.logical_param(self, "scale", nn.initializers.ones, x.shape[-n:], self.axes,
                              self.param_dtype)
    y = rms_normalize(x, self.eps, n).astype(x.dtype)
    weight = weight.reshape((1,) * (x.ndim - n) + weight.shape)  # explicit broadcast
    return weight.astype(x.dtype) * y
