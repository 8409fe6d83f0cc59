"""The LM head and its losses computed in sequence chunks, never holding [B,T,V] fp32 logits.

At V = 200,064 an 8K-token row's fp32 logits are 6.1 GiB (and as much again for their
gradient). Here the head is applied to C positions of every row at a time inside a scan whose
body is jax.checkpoint-ed: the forward keeps one chunk's [B,C,V] logits alive, and the
backward recomputes each chunk's logits instead of storing all of them. The head stays in
float32 when the model's lm_head_fp32 is set (the M1 report's fix), exactly as the model's
own head.

Use with `model.apply(..., return_hidden=True).hidden` (the final-normed states [B,T,M]) and
`params["lm_head"]` [M,V].
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import params as lp

IGNORE_INDEX = -100
# Positions per chunk of every row; the trainer's default (configs/common.py).
DEFAULT_CHUNK = 1024


def apply_lm_head(h_BTM: jax.Array, w_head_MV: jax.Array, config: ModelConfig) -> jax.Array:
  """[...,V] float32 logits, as MiniMaxM1ForCausalLM computes them."""
  if config.lm_head_fp32:
    # The M1 report's fix (§3.2): the head matmul itself in float32, so trainer and
    # sampler agree on log-probabilities.
    return jnp.dot(h_BTM.astype(jnp.float32), w_head_MV.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  dtype = jnp.dtype(config.dtype)
  return jnp.dot(h_BTM.astype(dtype), w_head_MV.astype(dtype)).astype(jnp.float32)


def _check_chunk(chunk_tokens) -> None:
  if not isinstance(chunk_tokens, int) or isinstance(chunk_tokens, bool) or chunk_tokens < 1:
    raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")


def _chunked_scan(hidden_BTM, w_head_MV, targets_BT, config, chunk_tokens, per_chunk):
  """Runs `per_chunk(logits_BCV, safe_targets_BC) -> tree of [B,C]` over C-position chunks
  of every row (a jax.checkpoint-ed scan body: one chunk's logits alive, recomputed in the
  backward) and stitches the results back to [B,T]."""
  _check_chunk(chunk_tokens)
  B, T, M = hidden_BTM.shape
  V = w_head_MV.shape[1]
  C = min(chunk_tokens, T)
  Z = -(-T // C)
  pad = Z * C - T
  h_ZBCM = jnp.pad(hidden_BTM, ((0, 0), (0, pad), (0, 0))).reshape(B, Z, C, M).swapaxes(0, 1)
  safe_BT = jnp.where((targets_BT >= 0) & (targets_BT < V), targets_BT, 0).astype(jnp.int32)
  t_ZBC = jnp.pad(safe_BT, ((0, 0), (0, pad))).reshape(B, Z, C).swapaxes(0, 1)

  @jax.checkpoint
  def chunk(h_BCM, t_BC):
    # Rows stay split as the batch is (not the head's FSDP-sharded embed dim, which would
    # all-reduce the chunk's logits on every chip).
    logits_BCV = nn.with_logical_constraint(apply_lm_head(h_BCM, w_head_MV, config),
                                            (lp.BATCH, lp.LENGTH, lp.VOCAB))
    return per_chunk(logits_BCV, t_BC)

  _, out_ZBC = jax.lax.scan(lambda carry, x: (carry, chunk(*x)), None, (h_ZBCM, t_ZBC))
  return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(B, Z * C)[:, :T], out_ZBC)


def _picked_log_prob(logits_BCV, t_BC):
  picked_BC = jnp.take_along_axis(logits_BCV, t_BC[..., None], axis=-1)[..., 0]
  return picked_BC - jax.nn.logsumexp(logits_BCV, axis=-1)


def token_log_probs(hidden_BTM: jax.Array, w_head_MV: jax.Array, targets_BT: jax.Array,
                    config: ModelConfig, *, chunk_tokens: int = DEFAULT_CHUNK) -> jax.Array:
  """[B,T] float32 log p(targets_BT[b,t] | the model's head at position t).

  No shift: pass targets_BT = ids[:, 1:] with hidden_BTM[:, :-1] for next-token scores.
  Targets outside [0, V) (e.g. IGNORE_INDEX) score as token 0; mask them yourself.
  Differentiable; memory O(B·chunk_tokens·V) in the forward and the backward.
  """
  return _chunked_scan(hidden_BTM, w_head_MV, targets_BT, config, chunk_tokens,
                       _picked_log_prob)


def token_log_probs_and_entropy(hidden_BTM: jax.Array, w_head_MV: jax.Array,
                                targets_BT: jax.Array, config: ModelConfig, *,
                                chunk_tokens: int = DEFAULT_CHUNK
                                ) -> tuple[jax.Array, jax.Array]:
  """(token_log_probs(...), the entropy of each position's distribution), both [B,T] fp32,
  from one head matmul per chunk. The entropy is a metric: it carries no gradient (so the
  backward recomputes only what the log-probs need)."""

  def per_chunk(logits_BCV, t_BC):
    lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
    picked_BC = jnp.take_along_axis(logits_BCV, t_BC[..., None], axis=-1)[..., 0]
    # -sum(p log p) with log p = z - lse (never the log of an underflowed p).
    logp_BCV = jax.lax.stop_gradient(logits_BCV - lse_BC[..., None])
    entropy_BC = -jnp.sum(jnp.exp(logp_BCV) * logp_BCV, axis=-1)
    return picked_BC - lse_BC, entropy_BC

  return _chunked_scan(hidden_BTM, w_head_MV, targets_BT, config, chunk_tokens, per_chunk)


def next_token_loss_sum(hidden_BTM: jax.Array, w_head_MV: jax.Array, labels_BT: jax.Array,
                        config: ModelConfig, *, chunk_tokens: int = DEFAULT_CHUNK,
                        ignore_index: int = IGNORE_INDEX) -> tuple[jax.Array, jax.Array]:
  """(summed CE, number of targets) of position t against labels[:, t+1], skipping
  `ignore_index`: m1jax.losses.next_token_loss * count, without the [B,T,V] logits."""
  targets_BT = labels_BT[:, 1:]
  valid_BT = targets_BT != ignore_index
  logp_BT = token_log_probs(hidden_BTM[:, :-1], w_head_MV, targets_BT, config,
                            chunk_tokens=chunk_tokens)
  return -jnp.sum(jnp.where(valid_BT, logp_BT, 0.0)), jnp.sum(valid_BT)


def chunked_next_token_loss(hidden_BTM: jax.Array, w_head_MV: jax.Array,
                            labels_BT: jax.Array, config: ModelConfig, *,
                            chunk_tokens: int = DEFAULT_CHUNK,
                            ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Mean next-token CE, equal to m1jax.losses.next_token_loss(model logits, labels)."""
  total, count = next_token_loss_sum(hidden_BTM, w_head_MV, labels_BT, config,
                                     chunk_tokens=chunk_tokens, ignore_index=ignore_index)
  return total / jnp.maximum(count, 1)
