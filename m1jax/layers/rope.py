"""Partial NeoX rotary embedding, computed on the fly (docs/MODEL.md §5.2).

Only the first `rotary_dim` dims of each head rotate, in rotate-half style within those dims
(pairs (i, i + rotary_dim/2)); the rest pass through. cos/sin come from the positions
directly, so no table of max_position_embeddings (10.24M) rows is ever built.
"""
import jax
import jax.numpy as jnp
import numpy as np


def rope_inverse_frequencies(rotary_dim: int, theta: float) -> jax.Array:
  """inv_freq[i] = theta^(-2i/rotary_dim), i < rotary_dim/2, float32.

  Built as a numpy constant with the reference's fp32 roundings (`1.0 / base **
  (arange(0, r, 2).float() / r)`): traced, XLA rewrites `pos * (1 / p)` into `pos / p`, which
  moves angles near position 1e6 by up to 0.03 rad and makes jit and eager disagree.
  """
  exponents = np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)
  powers = (np.float64(theta) ** exponents.astype(np.float64)).astype(np.float32)
  return jnp.asarray(np.float32(1.0) / powers)


def apply_partial_rope(x_BTHD: jax.Array, positions_BT: jax.Array, rotary_dim: int,
                       theta: float) -> jax.Array:
  """Rotates x[..., :rotary_dim] by the angle positions * inv_freq; returns x.dtype."""
  half = rotary_dim // 2
  inv_freq = rope_inverse_frequencies(rotary_dim, theta)
  # [B, T, rotary_dim/2]; then a broadcast axis for the heads.
  angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq[None, None]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x32 = x_BTHD.astype(jnp.float32)
  first, second = x32[..., :half], x32[..., half:rotary_dim]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  out = jnp.concatenate([rotated, x32[..., rotary_dim:]], axis=-1)
  return out.astype(x_BTHD.dtype)
