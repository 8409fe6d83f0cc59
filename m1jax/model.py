"""The MiniMax-M1 causal LM: embed -> hybrid stack -> final RMSNorm -> untied lm_head."""
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import params as P
from m1jax.layers.decoder import HybridStack
from m1jax.layers.moe import RouterStats
from m1jax.layers.norms import RMSNorm
from m1jax.losses import load_balancing_loss


@flax.struct.dataclass
class CausalLMOutput:
  """logits [B,T,V] float32; router_stats with a leading [L] axis; aux_loss (unscaled)."""
  logits: jax.Array
  router_stats: RouterStats
  aux_loss: jax.Array


class MiniMaxM1ForCausalLM(nn.Module):
  """`apply({"params": params}, input_ids_BT)` -> CausalLMOutput.

  positions_BT default to 0..T-1 per row; token_mask_BT (1 = real token) only excludes
  padding from the router statistics. Pass `input_embeds_BTM` instead of ids to feed
  embeddings directly (used by the causality test).

  Inference: pass `cache=` (an `m1jax.inference.HybridCache`) to run the new tokens after
  the cached ones; the call then returns (CausalLMOutput, new cache). Rows are left-padded:
  token_mask_BT marks the real tokens (a suffix of each row), which alone enter the
  lightning states and the KV cache, and default positions continue each row's cached
  length. `last_logits_only` computes the LM head for the last position only (prefill).

  Packed training rows: segment_ids_BT [B,T] int (each document a contiguous run of one id,
  padding 0, as m1jax.train.data packs them) keeps attention inside documents: softmax
  layers mask other segments' keys and lightning states reset at document starts. Pass
  per-document positions_BT. Unless token_mask_BT is given, segment 0 (padding) is then
  left out of the router statistics.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, input_ids_BT: Optional[jax.Array] = None,
               positions_BT: Optional[jax.Array] = None,
               token_mask_BT: Optional[jax.Array] = None,
               *, input_embeds_BTM: Optional[jax.Array] = None, cache=None,
               last_logits_only: bool = False,
               segment_ids_BT: Optional[jax.Array] = None):
    cfg = self.config
    V, M = cfg.vocab_size, cfg.hidden_size
    dtype, pdtype, init = P.compute_dtype(cfg), P.param_dtype(cfg), P.kernel_init(cfg)
    embedding = P.logical_param(self, "embed_tokens", init, (V, M), (P.VOCAB, P.EMBED), pdtype)
    if (input_ids_BT is None) == (input_embeds_BTM is None):
      raise ValueError("MiniMaxM1ForCausalLM: pass exactly one of input_ids_BT and "
                       "input_embeds_BTM")
    if input_embeds_BTM is None:
      if input_ids_BT.ndim != 2:
        raise ValueError(f"input_ids_BT must be [B,T], got shape {input_ids_BT.shape}")
      x = jnp.take(embedding, input_ids_BT, axis=0).astype(dtype)
    else:
      x = input_embeds_BTM.astype(dtype)
    B, T = x.shape[:2]
    if cache is not None:
      token_mask_BT, default_positions_BT, cache_info = cache.step_inputs(T, token_mask_BT)
      positions_BT = default_positions_BT if positions_BT is None else positions_BT
      x, stats, layers = HybridStack(cfg, name="model")(x, positions_BT, token_mask_BT,
                                                        cache.layers, cache_info)
      cache = cache.advance(layers, token_mask_BT)
    else:
      if positions_BT is None:
        positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
      if segment_ids_BT is not None and token_mask_BT is None:
        token_mask_BT = segment_ids_BT != 0
      x, stats = HybridStack(cfg, name="model")(x, positions_BT, token_mask_BT,
                                                segment_ids_BT=segment_ids_BT)
    if last_logits_only:
      x = x[:, -1:]
    h = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="norm")(x)
    w_head = P.logical_param(self, "lm_head", init, (M, V), (P.EMBED, P.VOCAB), pdtype)
    if cfg.lm_head_fp32:
      # The M1 report's fix (§3.2): the head matmul itself in float32, so trainer and
      # sampler agree on log-probabilities.
      logits = jnp.dot(h.astype(jnp.float32), w_head.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
    else:
      logits = jnp.dot(h, w_head.astype(dtype)).astype(jnp.float32)
    out = CausalLMOutput(logits=logits, router_stats=stats, aux_loss=load_balancing_loss(stats))
    return out if cache is None else (out, cache)


def init_params(model: MiniMaxM1ForCausalLM, rng: jax.Array, seq_len: int = 8):
  """Random params (logical-partitioning boxes removed) for `model`."""
  ids = jnp.zeros((1, seq_len), jnp.int32)
  # Jitted: eager init dispatches every op of every layer one by one (seconds on CPU).
  return nn.meta.unbox(jax.jit(model.init)(rng, ids)["params"])
