"""Chunked lightning attention with every block at once: no scan over blocks.

The same block decomposition as linear_attention_chunked.chunked (docs/MODEL.md §6.4), but
the state entering each block is not carried by a `lax.scan`. Unrolled, the recurrence
S_{z+1} = exp(-s C) S_z + KV_z gives the state before block z in closed form:

  S_z = exp(-s C z) S_0 + sum_{y<z} exp(-s C (z-1-y)) KV_y,

one [Z,Z] decay matrix per head applied to the stacked per-block KV_y = (K_y * kdecay)^T V_y.
So the intra-block products, the per-block KV, the prefix states and the state reads are each
one batched einsum over all Z blocks. Why: on XLA:CPU the scan runs T/C sequential steps of
small ops (64 steps of [B,64,H,D] tiles per layer at T 4096, C 64) that use one core at a time
and pay per-step overhead, forward and (worse) backward; the batched form keeps both cores
busy. It stores [Z,H,D,D] states (Z = T/C), T*C*H scores and needs no extra FLOPs worth
noting (the Z x Z decay product is Z^2 H D^2, under 1% of the projections at the benchmark's
sizes). "auto" takes it on CPU where it measured faster than the scan (blocks <= 128, at
least two of them; linear_attention._fallback, WORKSPACE_NOTES.md issue 16).

Every exponent is -s * n with n >= 0 (masked entries clamped, then zeroed with `where`), as
in linear_attention_reference, so neither direction meets exp overflow or inf * 0.

Packed documents (run_BT given) reset the state inside blocks; that case runs the scan
(`chunked`), which handles them exactly.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D (and J) head dim, C block
length (and S, a second block position), Z blocks (and Y, a second block index).
"""
import jax.numpy as jnp

from m1jax.ops.linear_attention_chunked import block_length, chunked
from m1jax.ops.linear_attention_reference import (_causal_decay, _matmul, _scale_rows,
                                                  span_forward)

_F32 = jnp.float32


def _block_decays(slope_H, block: int, num_blocks: int):
  """(prefix_HZY, start_HZ, final_HY): the decays of KV_y and S_0 into the state before
  block z, and of KV_y into the state after the last block; float32."""
  z = jnp.arange(num_blocks, dtype=_F32)
  gap_ZY = z[:, None] - 1.0 - z[None, :]
  per_block_H = slope_H.astype(_F32) * block
  prefix_HZY = jnp.where((gap_ZY >= 0)[None],
                         jnp.exp(-per_block_H[:, None, None] * jnp.maximum(gap_ZY, 0.0)[None]),
                         0.0)
  start_HZ = jnp.exp(-per_block_H[:, None] * z[None, :])
  final_HY = jnp.exp(-per_block_H[:, None] * (num_blocks - 1.0 - z)[None, :])
  return prefix_HZY, start_HZ, final_HY


def chunked_parallel(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT=None):
  """`chunked`'s function (same signature and results up to float rounding), all blocks
  batched. The tail (T mod C tokens) is its own span, as in `chunked`."""
  if run_BT is not None:
    return chunked(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT)
  b, t, h, d = q_BTHD.shape
  block = block_length(block_size, t)
  num_blocks = t // block
  full_len = num_blocks * block
  dtype = q_BTHD.dtype
  if num_blocks == 0:  # T = 0: nothing to batch
    return chunked(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size)

  def blocks(x_BTHD):
    return x_BTHD[:, :full_len].reshape(b, num_blocks, block, h, d)

  q, k, v = blocks(q_BTHD), blocks(k_BTHD), blocks(v_BTHD)
  pos_C = jnp.arange(block, dtype=_F32)
  # Intra-block: ((Q K^T) * Diag) V, every block at once.
  scores_BZHCS = _matmul("bzchd,bzshd->bzhcs", q, k) * _causal_decay(slope_H, block)[None, None]
  out_BZCHJ = _matmul("bzhcs,bzshj->bzchj", scores_BZHCS.astype(dtype), v)
  # Each block's own contribution to the state after it: KV_y = (K_y * kdecay)^T V_y.
  k_decay_CH = jnp.exp(-slope_H[None, :] * (block - 1.0 - pos_C)[:, None])
  kv_BZHDJ = _matmul("bzchd,bzchj->bzhdj", _scale_rows(k, k_decay_CH[None, None]), v)
  prefix_HZY, start_HZ, final_HY = _block_decays(slope_H, block, num_blocks)
  state_BZHDJ = jnp.einsum("hzy,byhdj->bzhdj", prefix_HZY, kv_BZHDJ)
  final_BHDJ = jnp.einsum("hy,byhdj->bhdj", final_HY, kv_BZHDJ)
  if state_BHDD is not None:
    state_BZHDJ = state_BZHDJ + start_HZ.T[None, :, :, None, None] * state_BHDD[:, None]
    final_BHDJ = final_BHDJ + (jnp.exp(-slope_H * full_len)[None, :, None, None]
                               * state_BHDD)
  # Inter-block: (Q * qdecay) S_z, qdecay[i] = exp(-s (i+1)) (S_z includes no token of z).
  q_decay_CH = jnp.exp(-slope_H[None, :] * (pos_C + 1.0)[:, None])
  out_BZCHJ = out_BZCHJ + _matmul("bzchd,bzhdj->bzchj", _scale_rows(q, q_decay_CH[None, None]),
                                  state_BZHDJ.astype(dtype))
  out_BTHD = out_BZCHJ.astype(dtype).reshape(b, full_len, h, d)
  if full_len == t:
    return out_BTHD, final_BHDJ
  tail = tuple(x[:, full_len:] for x in (q_BTHD, k_BTHD, v_BTHD))
  tail_out_BCHD, state_BHDD = span_forward(*tail, slope_H, final_BHDJ)
  return jnp.concatenate([out_BTHD, tail_out_BCHD], axis=1), state_BHDD
