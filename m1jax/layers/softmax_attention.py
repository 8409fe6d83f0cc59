"""Softmax GQA attention with partial RoPE (docs/MODEL.md §5): layers 7, 15, ..., 79."""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import params as lp
from m1jax.layers.cache_info import CacheInfo, key_positions
from m1jax.layers.rope import apply_partial_rope
from m1jax.ops import attention_impl


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
  # head_of_HK[h, k] = 1 where query head h reads KV head k.
  head_of_HK = jnp.repeat(jnp.eye(K, dtype=q_BTHD.dtype), H // K, axis=0)

  def logits(k_BSKD, k_positions_BS):
    if T == 1:
      # Decode: contract over (K, D), the cache's two minor axes, with each query head spread
      # over all K KV heads, zero except its own (head_of_HK). A batched dot over (b, k)
      # makes XLA transpose the whole [B,S,K,D] cache to [B,K,S,D] on every step; this costs
      # K x the (memory-bound) GEMV flops instead and reads the cache once, in place.
      q_BHKD = jnp.einsum("bhd,hk->bhkd", q_BTHD[:, 0], head_of_HK)
      # The cache as the dot's left operand ([S, K*D] as stored); the [S, H] result is
      # small to transpose.
      l_BSH = jnp.einsum("bskd,bhkd->bsh", k_BSKD, q_BHKD, preferred_element_type=jnp.float32)
      l_BKGTS = l_BSH.reshape(B, -1, K, H // K).transpose(0, 2, 3, 1)[:, :, :, None, :]
    else:
      l_BKGTS = jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k_BSKD,
                           preferred_element_type=jnp.float32)
    visible_BTS = k_positions_BS[:, None, :] <= q_positions_BT[:, :, None]
    return jnp.where(visible_BTS[:, None, None], l_BKGTS * (D**-0.5), neg)

  def weighted(p_BKGTS, v_BSKD):
    if T == 1:
      # p @ V[b] as [H, S] x [S, K*D] (V in its own layout), keeping each head's own KV head.
      p_BHS = p_BKGTS[:, :, :, 0].reshape(B, H, -1)
      o_BHKD = jnp.einsum("bhs,bskd->bhkd", p_BHS, v_BSKD, preferred_element_type=jnp.float32)
      o_BHD = jnp.einsum("bhkd,hk->bhd", o_BHKD, head_of_HK)
      return o_BHD.reshape(B, 1, K, H // K, D)
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
  def __call__(self, h_BTM: jax.Array, positions_BT: jax.Array, token_mask_BT=None,
               cache=None, cache_info: Optional[CacheInfo] = None, segment_ids_BT=None):
    """Returns (y_BTM, new cache): with `cache`, {"k", "v": [B,T,K,D]} the T new slots;
    without, None.

    Tokens whose token_mask_BT is 0 (padding) are nobody's keys. cache: {"k", "v":
    [B,S_max,K,D]}, only read here: the queries see every cached slot whose key position in
    cache_info.kv_positions_BS is <= their own, and the new tokens likewise. The caller
    writes the returned new slots at [cache_info.index, cache_info.index + T) (HybridStack
    does it once for the whole stack, in place).
    """
    cfg = self.config
    M, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    dtype, pdtype, init = lp.compute_dtype(cfg), lp.param_dtype(cfg), lp.kernel_init(cfg)
    wq = lp.logical_param(self, "q_proj", init, (M, H, D), (lp.EMBED, lp.HEADS, lp.HEAD_DIM),
                          pdtype)
    wk = lp.logical_param(self, "k_proj", init, (M, K, D), (lp.EMBED, lp.KV_HEADS, lp.HEAD_DIM),
                          pdtype)
    wv = lp.logical_param(self, "v_proj", init, (M, K, D), (lp.EMBED, lp.KV_HEADS, lp.HEAD_DIM),
                          pdtype)
    wo = lp.logical_param(self, "o_proj", init, (H, D, M), (lp.HEADS, lp.HEAD_DIM, lp.EMBED),
                          pdtype)
    h = h_BTM.astype(dtype)
    q = jnp.einsum("btm,mhd->bthd", h, wq.astype(dtype))
    k = jnp.einsum("btm,mkd->btkd", h, wk.astype(dtype))
    v = jnp.einsum("btm,mkd->btkd", h, wv.astype(dtype))
    q = apply_partial_rope(q, positions_BT, cfg.rotary_dim, cfg.rope_theta)
    k = apply_partial_rope(k, positions_BT, cfg.rotary_dim, cfg.rope_theta)
    # Heads over tensor. Without a cache K/V stay split like q along the sequence: under
    # sequence parallelism attention_impl.attend all-gathers exactly K/V (shard_map,
    # m1jax/ops/softmax_attention_sp.py), so no earlier gather may be forced here. With a
    # cache they are whole along the sequence (kv_length).
    kv_length = lp.LENGTH if cache is None else lp.KV_LENGTH
    q = lp.constrain(q, (lp.BATCH, lp.LENGTH, lp.HEADS, lp.HEAD_DIM))
    k = lp.constrain(k, (lp.BATCH, kv_length, lp.KV_HEADS, lp.HEAD_DIM))
    v = lp.constrain(v, (lp.BATCH, kv_length, lp.KV_HEADS, lp.HEAD_DIM))
    k_positions_BT = key_positions(positions_BT, token_mask_BT)
    if cache is None:
      o = attention_impl.attend(cfg.attention_impl, q, k, v, positions_BT, k_positions_BT,
                                segment_ids_BT, padded=token_mask_BT is not None,
                                sequence_parallel=not self.is_initializing())
    else:
      # The new k/v round-trip through the cache dtype, as if read back from the cache.
      k, v = k.astype(cache["k"].dtype), v.astype(cache["v"].dtype)
      o = attention_impl.attend_cached(cfg.attention_impl, q, cache["k"].astype(dtype),
                                       cache["v"].astype(dtype), k.astype(dtype),
                                       v.astype(dtype), positions_BT,
                                       cache_info.kv_positions_BS, k_positions_BT)
      cache = {"k": k, "v": v}
    y_BTM = jnp.einsum("bthd,hdm->btm", o, wo.astype(dtype))
    return y_BTM, cache
