"""The MiniMax-M1 causal LM: embed -> hybrid stack -> final RMSNorm -> untied lm_head."""
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.chunked_loss import apply_lm_head
from m1jax.config import ModelConfig
from m1jax.layers import params as lp
from m1jax.layers.decoder import HybridStack
from m1jax.layers.moe import RouterStats
from m1jax.layers.norms import RMSNorm
from m1jax.losses import load_balancing_loss


@flax.struct.dataclass
class CausalLMOutput:
  """logits [B,T,V] float32; router_stats with a leading [L] axis; aux_loss (unscaled);
  hidden [B,T,M], the final-normed states, only with return_hidden=True (logits are then
  None: m1jax.chunked_loss applies the head in chunks)."""
  logits: Optional[jax.Array]
  router_stats: RouterStats
  aux_loss: jax.Array
  hidden: Optional[jax.Array] = None


class MiniMaxM1ForCausalLM(nn.Module):
  """`apply({"params": params}, input_ids_BT)` -> CausalLMOutput.

  token_mask_BT (1 = real token) marks padding; rows are LEFT-padded (right padding works
  too: it follows every real token). Padding is left out of the lightning states, is no
  softmax key and is left out of the router statistics, so each row's real positions get
  the logits it would get alone (RL scores left-padded rollouts this way). positions_BT
  default to 0..T-1 per row; with token_mask_BT, to the number of real tokens before each
  token (0 at a row's first real token). Pass `input_embeds_BTM` instead of ids to feed
  embeddings directly (used by the causality test).

  Inference: pass `cache=` (an `m1jax.inference.HybridCache`) to run the new tokens after
  the cached ones; the call then returns (CausalLMOutput, new cache). Rows are left-padded:
  token_mask_BT marks the real tokens (a suffix of each row), which alone enter the
  lightning states and the KV cache, and default positions continue each row's cached
  length. `last_logits_only` computes the LM head for the last position only (prefill).
  `return_hidden=True` skips the LM head: the output's `hidden` holds the final-normed
  states and `logits` is None (training: m1jax.chunked_loss, without [B,T,V] logits).

  Packed training rows: segment_ids_BT [B,T] int (each document a contiguous run of one id,
  padding 0, as m1jax.train.data packs them) keeps attention inside documents: softmax
  layers mask other segments' keys and lightning states reset at document starts. Pass
  per-document positions_BT. Unless token_mask_BT is given, segment 0 is then the padding
  mask. segment_ids_BT and `cache` do not combine.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids_BT: Optional[jax.Array] = None,
               positions_BT: Optional[jax.Array] = None,
               token_mask_BT: Optional[jax.Array] = None,
               *, input_embeds_BTM: Optional[jax.Array] = None, cache=None,
               last_logits_only: bool = False,
               segment_ids_BT: Optional[jax.Array] = None, return_hidden: bool = False):
    cfg = self.config
    V, M = cfg.vocab_size, cfg.hidden_size
    dtype, pdtype, init = lp.compute_dtype(cfg), lp.param_dtype(cfg), lp.kernel_init(cfg)
    embedding = lp.logical_param(self, "embed_tokens", init, (V, M), (lp.VOCAB, lp.EMBED), pdtype)
    if (input_ids_BT is None) == (input_embeds_BTM is None):
      raise ValueError("MiniMaxM1ForCausalLM: pass exactly one of input_ids_BT and "
                       "input_embeds_BTM")
    if input_embeds_BTM is None:
      if input_ids_BT.ndim != 2:
        raise ValueError(f"input_ids_BT must be [B,T], got shape {input_ids_BT.shape}")
      x = jnp.take(embedding, input_ids_BT, axis=0).astype(dtype)
    else:
      x = input_embeds_BTM.astype(dtype)
    x = lp.constrain(x, (lp.BATCH, lp.LENGTH, lp.EMBED))
    B, T = x.shape[:2]
    layers = cache_info = None
    if cache is not None:
      if segment_ids_BT is not None:
        raise ValueError("MiniMaxM1ForCausalLM: segment_ids_BT (packed training rows) cannot "
                         "be combined with a cache")
      token_mask_BT, default_positions_BT, cache_info = cache.step_inputs(T, token_mask_BT)
      positions_BT = default_positions_BT if positions_BT is None else positions_BT
      layers = cache.layers
    else:
      if segment_ids_BT is not None and token_mask_BT is None:
        token_mask_BT = segment_ids_BT != 0
      if positions_BT is None:
        positions_BT = _default_positions(B, T, token_mask_BT)
    (x, stats), layers = HybridStack(cfg, name="model")(x, positions_BT, token_mask_BT, layers,
                                                        cache_info, segment_ids_BT)
    if cache is not None:
      cache = cache.advance(layers, token_mask_BT)
    if last_logits_only:
      x = x[:, -1:]
    h = lp.constrain(RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="norm")(x),
                     (lp.BATCH, lp.LENGTH, lp.EMBED))
    w_head = lp.logical_param(self, "lm_head", init, (M, V), (lp.EMBED, lp.VOCAB), pdtype)
    if return_hidden:
      # The loss applies the head itself, chunk by chunk, never holding [B,T,V] fp32 logits.
      out = CausalLMOutput(logits=None, router_stats=stats, aux_loss=load_balancing_loss(stats),
                           hidden=h)
      return out if cache is None else (out, cache)
    # float32 when lm_head_fp32 (the M1 report's fix), as the chunked loss computes it.
    logits = apply_lm_head(h, w_head, cfg)
    # Batch-sharded logits: the head weight is all-gathered instead of contracting over its
    # FSDP-sharded embed dim and all-reducing [B,T,V] on every chip.
    logits = lp.constrain(logits, (lp.BATCH, lp.LENGTH, lp.VOCAB))
    out = CausalLMOutput(logits=logits, router_stats=stats, aux_loss=load_balancing_loss(stats))
    return out if cache is None else (out, cache)


def _default_positions(B: int, T: int, token_mask_BT: Optional[jax.Array]) -> jax.Array:
  """0..T-1 per row; with a mask, the count of real tokens before each token, so a
  left-padded row starts at 0 at its first real token, as it does in the cache."""
  if token_mask_BT is None:
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  return jnp.cumsum((token_mask_BT != 0).astype(jnp.int32), axis=1) - 1


def init_params(model: MiniMaxM1ForCausalLM, rng: jax.Array, seq_len: int = 8):
  """Random params (logical-partitioning boxes removed) for `model`."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  # Jitted: eager init dispatches every op of every layer one by one (seconds on CPU).
  return nn.meta.unbox(jax.jit(model.init)(rng, ids)["params"])
