"""Softmax GQA attention with partial RoPE (SPEC.md §3.4): layers 7, 15, ..., 79."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import params as P
from m1jax.layers.rope import apply_partial_rope


def causal_gqa_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                         q_positions_BT: jax.Array, k_positions_BS: jax.Array) -> jax.Array:
  """Causal grouped-query attention; query head h reads KV head h // (H/K).

  Logits and softmax in float32, scaled by 1/sqrt(D). A key is visible when its position is
  <= the query's, so the same code serves prefill and cached decode. Returns [B,T,H,D].
  """
  B, T, H, D = q_BTHD.shape
  K = k_BSKD.shape[2]
  q_BTKGD = q_BTHD.reshape(B, T, K, H // K, D)
  logits_BKGTS = jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k_BSKD,
                            preferred_element_type=jnp.float32) * (D**-0.5)
  visible_BTS = k_positions_BS[:, None, :] <= q_positions_BT[:, :, None]
  logits_BKGTS = jnp.where(visible_BTS[:, None, None], logits_BKGTS,
                           jnp.finfo(jnp.float32).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKD.dtype)
  out_BTKGD = jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS, v_BSKD,
                         preferred_element_type=jnp.float32)
  return out_BTKGD.reshape(B, T, H, D).astype(q_BTHD.dtype)


class SoftmaxAttention(nn.Module):
  """q/k/v projections (no bias, no qk-norm), partial RoPE, causal GQA, o_proj."""
  config: ModelConfig

  @nn.compact
  def __call__(self, h_BTM: jax.Array, positions_BT: jax.Array) -> jax.Array:
    cfg = self.config
    M, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    dtype, pdtype, init = P.compute_dtype(cfg), P.param_dtype(cfg), P.kernel_init(cfg)
    wq = P.logical_param(self, "q_proj", init, (M, H, D), (P.EMBED, P.HEADS, P.HEAD_DIM), pdtype)
    wk = P.logical_param(self, "k_proj", init, (M, K, D), (P.EMBED, P.KV_HEADS, P.HEAD_DIM),
                         pdtype)
    wv = P.logical_param(self, "v_proj", init, (M, K, D), (P.EMBED, P.KV_HEADS, P.HEAD_DIM),
                         pdtype)
    wo = P.logical_param(self, "o_proj", init, (H, D, M), (P.HEADS, P.HEAD_DIM, P.EMBED), pdtype)
    h = h_BTM.astype(dtype)
    q = jnp.einsum("btm,mhd->bthd", h, wq.astype(dtype))
    k = jnp.einsum("btm,mkd->btkd", h, wk.astype(dtype))
    v = jnp.einsum("btm,mkd->btkd", h, wv.astype(dtype))
    q = apply_partial_rope(q, positions_BT, cfg.rotary_dim, cfg.rope_theta)
    k = apply_partial_rope(k, positions_BT, cfg.rotary_dim, cfg.rope_theta)
    o = causal_gqa_attention(q, k, v, positions_BT, positions_BT)
    return jnp.einsum("bthd,hdm->btm", o, wo.astype(dtype))
