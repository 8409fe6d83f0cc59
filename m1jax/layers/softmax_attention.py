"""Softmax GQA attention with partial RoPE (docs/MODEL.md §5): layers 7, 15, ..., 79."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import params as P
from m1jax.layers.rope import apply_partial_rope


def causal_gqa_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                         q_positions_BT: jax.Array, k_positions_BS: jax.Array,
                         q_segment_ids_BT: jax.Array | None = None,
                         k_segment_ids_BS: jax.Array | None = None) -> jax.Array:
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
  if q_segment_ids_BT is not None:
    # Packed documents: a query sees keys of its own segment only (positions restart per
    # document, so the position test alone would let it see earlier documents).
    visible_BTS &= k_segment_ids_BS[:, None, :] == q_segment_ids_BT[:, :, None]
  logits_BKGTS = jnp.where(visible_BTS[:, None, None], logits_BKGTS,
                           jnp.finfo(jnp.float32).min)
  probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKD.dtype)
  out_BTKGD = jnp.einsum("bkgts,bskd->btkgd", probs_BKGTS, v_BSKD,
                         preferred_element_type=jnp.float32)
  return out_BTKGD.reshape(B, T, H, D).astype(q_BTHD.dtype)


def cached_gqa_attention(q_BTHD: jax.Array, k_cache_BSKD: jax.Array, v_cache_BSKD: jax.Array,
                         k_new_BTKD: jax.Array, v_new_BTKD: jax.Array,
                         q_positions_BT: jax.Array, cache_positions_BS: jax.Array,
                         new_positions_BT: jax.Array) -> jax.Array:
  """causal_gqa_attention over the keys [cache slots ++ new tokens], without writing the
  new tokens into the cache first: one softmax over both parts (shared max and normaliser).

  Why: inside the scanned stack the cache is then only READ, so it needs no per-step copy
  through scan ys, and the stack writes the T new slots once, in place, on the donated
  buffer. Returns [B,T,H,D].
  """
  B, T, H, D = q_BTHD.shape
  K = k_cache_BSKD.shape[2]
  q_BTKGD = q_BTHD.reshape(B, T, K, H // K, D)
  neg = jnp.finfo(jnp.float32).min
  eye_KK = jnp.eye(K, dtype=q_BTHD.dtype)

  def logits(k_BSKD, k_positions_BS):
    if T == 1:
      # Decode: contract over (K, D), the cache's two minor axes, with q spread block-
      # diagonally over the K groups (eye_KK). A batched dot over (b, k) makes XLA transpose
      # the whole [B,S,K,D] cache to [B,K,S,D] on every step; this costs K x the (memory-
      # bound) GEMV flops instead and reads the cache once, in place.
      q_BKGKD = jnp.einsum("bkgd,kj->bkgjd", q_BTKGD[:, 0], eye_KK)
      # The cache as the dot's left operand ([S, K*D] as stored); the [S, KG] result is
      # small to transpose.
      l_BSKG = jnp.einsum("bsjd,bkgjd->bskg", k_BSKD, q_BKGKD,
                          preferred_element_type=jnp.float32)
      l_BKGTS = l_BSKG.transpose(0, 2, 3, 1)[:, :, :, None, :]
    else:
      l_BKGTS = jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k_BSKD,
                           preferred_element_type=jnp.float32)
    visible_BTS = k_positions_BS[:, None, :] <= q_positions_BT[:, :, None]
    return jnp.where(visible_BTS[:, None, None], l_BKGTS * (D**-0.5), neg)

  def weighted(p_BKGTS, v_BSKD):
    if T == 1:
      # p @ V[b] as [KG, S] x [S, K*D] (V in its own layout), keeping the k == j blocks.
      o_BKGJD = jnp.einsum("bkgs,bsjd->bkgjd", p_BKGTS[:, :, :, 0], v_BSKD,
                           preferred_element_type=jnp.float32)
      o_BKGD = jnp.einsum("bkgjd,kj->bkgd", o_BKGJD, eye_KK)
      return o_BKGD[:, None]
    return jnp.einsum("bkgts,bskd->btkgd", p_BKGTS, v_BSKD, preferred_element_type=jnp.float32)

  l_old, l_new = logits(k_cache_BSKD, cache_positions_BS), logits(k_new_BTKD, new_positions_BT)
  m = jnp.maximum(jnp.max(l_old, axis=-1, keepdims=True), jnp.max(l_new, axis=-1, keepdims=True))
  e_old, e_new = jnp.exp(l_old - m), jnp.exp(l_new - m)
  denom = jnp.sum(e_old, axis=-1, keepdims=True) + jnp.sum(e_new, axis=-1, keepdims=True)
  # Normalise before the cast to the value dtype, as causal_gqa_attention does.
  out_BTKGD = (weighted((e_old / denom).astype(v_cache_BSKD.dtype), v_cache_BSKD)
               + weighted((e_new / denom).astype(v_new_BTKD.dtype), v_new_BTKD))
  return out_BTKGD.reshape(B, T, H, D).astype(q_BTHD.dtype)


class SoftmaxAttention(nn.Module):
  """q/k/v projections (no bias, no qk-norm), partial RoPE, causal GQA, o_proj."""
  config: ModelConfig

  @nn.compact
  def __call__(self, h_BTM: jax.Array, positions_BT: jax.Array, cache=None,
               cache_index=None, kv_positions_BS=None, segment_ids_BT=None,
               new_kv_positions_BT=None):
    """Returns y_BTM; with `cache` returns (y_BTM, {"k", "v": [B,T,K,D]} the new slots).

    cache: {"k", "v": [B,S_max,K,D]}, only read here: the queries see every cached slot whose
    key position in kv_positions_BS [B,S_max] is <= their own (empty, padded or unwritten
    slots carry int32 max) and the new tokens whose new_kv_positions_BT is. The caller
    writes the returned new slots at [cache_index, cache_index + T) (HybridStack does it once
    for the whole stack, in place); cache_index itself is not used here.
    """
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
    if cache is None:
      o = causal_gqa_attention(q, k, v, positions_BT, positions_BT, segment_ids_BT,
                               segment_ids_BT)
    else:
      # The new k/v round-trip through the cache dtype, as if read back from the cache.
      k, v = k.astype(cache["k"].dtype), v.astype(cache["v"].dtype)
      o = cached_gqa_attention(q, cache["k"].astype(dtype), cache["v"].astype(dtype),
                               k.astype(dtype), v.astype(dtype), positions_BT, kv_positions_BS,
                               new_kv_positions_BT)
      cache = {"k": k, "v": v}
    y_BTM = jnp.einsum("bthd,hdm->btm", o, wo.astype(dtype))
    return y_BTM if cache is None else (y_BTM, cache)
