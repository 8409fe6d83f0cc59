"""Chunked lightning attention in pure JAX: the prefill and training path, and the
reference every kernel is tested against (docs/MODEL.md §6.4).

A `lax.scan` over blocks of C tokens carries the fp32 state (and, with packed documents, the
document the state belongs to); each block is one exact `span_forward`, so the intra-block
part is a masked matmul and the inter-block part a state read.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C block length,
Z blocks.
"""
import operator

import jax.numpy as jnp
from jax import lax

from m1jax.ops.linear_attention_reference import span_forward, zero_state

# The remote code's BLOCK constant (docs/MODEL.md §3.1).
DEFAULT_BLOCK_SIZE = 256


def block_length(block_size, t: int) -> int:
  """The block length C used for T tokens: block_size (default 256), at most T, at least 1."""
  block = DEFAULT_BLOCK_SIZE if block_size is None else block_size
  # A block longer than T is just T; max(1, .) keeps T = 0 from dividing by zero.
  return max(1, min(operator.index(block), t))


def chunked(q_BTHD, k_BTHD, v_BTHD, slope_H, state_BHDD, block_size, run_BT=None):
  """Scan over full blocks of C tokens carrying the fp32 state, then one short tail block.

  The tail (T mod C tokens) is its own span rather than padding: a padded block would
  decay the state by exp(-s C) instead of exp(-s m) and the padded positions would leak into
  the final state. run_BT: None (one document per row) or `document_runs` of segment ids.
  """
  b, t, h, d = q_BTHD.shape
  block = block_length(block_size, t)
  num_full = t // block
  full_len = num_full * block
  segmented = run_BT is not None
  if not segmented:  # a dummy document index keeps one scan body for both cases
    run_BT = jnp.zeros((b, t), jnp.int32)

  def block_step(carry, inputs):
    state, state_run_B = carry
    run_BC, *qkv_block = inputs
    out_BCHD, state = span_forward(*qkv_block, slope_H, state,
                                   *((run_BC, state_run_B) if segmented else ()))
    return (state, run_BC[:, -1]), out_BCHD

  def to_blocks(x_BT):
    x_BZC = x_BT[:, :full_len].reshape((b, num_full, block) + x_BT.shape[2:])
    return jnp.moveaxis(x_BZC, 1, 0)

  blocks = tuple(to_blocks(x) for x in (run_BT, q_BTHD, k_BTHD, v_BTHD))
  carry = (zero_state(q_BTHD, state_BHDD), run_BT[:, 0])
  carry, out_ZBCHD = lax.scan(block_step, carry, blocks)
  out_BTHD = jnp.moveaxis(out_ZBCHD, 0, 1).reshape(b, full_len, h, d)
  if full_len == t:
    return out_BTHD, carry[0]
  tail = tuple(x[:, full_len:] for x in (q_BTHD, k_BTHD, v_BTHD))
  tail_runs = (run_BT[:, full_len:], carry[1]) if segmented else ()
  tail_out_BCHD, state_BHDD = span_forward(*tail, slope_H, carry[0], *tail_runs)
  return jnp.concatenate([out_BTHD, tail_out_BCHD], axis=1), state_BHDD
