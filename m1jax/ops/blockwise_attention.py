"""Blockwise (flash) causal GQA softmax attention in pure JAX: the same math as
m1jax.layers.softmax_attention.causal_gqa_attention without its [B,H,T,S] fp32 logits.

Queries are cut into Z chunks of C tokens and keys into W chunks of U slots (local letters,
after docs/MODEL.md §2's Z/C). For each query chunk an online softmax runs over the key
chunks (running max m, sum l and fp32 accumulator), so memory is O(T·U) per head, not
O(T·S). The backward is a hand-written flash-attention backward (custom_vjp) that recomputes
each chunk's probabilities from the saved log-sum-exp, so it too stays O(T·U) instead of
storing every chunk's probabilities as a differentiated scan would.

Masking is the XLA path's, position based: a key is visible when its position is <= the
query's (and its segment equals the query's). A chunk pair in which no key is visible to any
query (above the causal diagonal, another document, empty or padded cache slots) is skipped
with lax.switch: half the work of a causal T x T attention; a pair in which every query sees
every key skips the mask.

A query that sees no key at all (a padding token) gets what the XLA path gives it: the
softmax of all-equal logits, i.e. the mean of V over every key, and the matching gradient
(dV only). Real tokens never read padding rows, but this keeps the two paths equal
everywhere.
"""
import functools

import jax
import jax.numpy as jnp

# Logit of an invisible key, as in the XLA path: finite, so a row that sees nothing yields
# exp(0) = 1 per key (the uniform softmax) and never exp(-inf + inf) = NaN.
_NEG = float(jnp.finfo(jnp.float32).min)
# Position of a padded key slot (never visible) and of a padded query (sees nothing).
_KEY_PAD = int(jnp.iinfo(jnp.int32).max)
_QUERY_PAD = int(jnp.iinfo(jnp.int32).min)

# Measured fastest on a 2-core CPU (experiments/bench_attention.py): a [C,G,U] fp32 logits
# block of 256 x 4 x 256 (1 MiB per KV head) stays in cache; 512 was several times slower.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256

# Chunk-pair modes (_pair_modes_ZW), the lax.switch branch index. FULL pairs (below the
# causal diagonal of one document: 120 of the 136 needed pairs at T 4096) drop the
# visibility mask, ~25% of the per-pair elementwise passes (WORKSPACE_NOTES.md, issue 16).
SKIP, MASKED, FULL = 0, 1, 2


def _chunk(x, size: int, pad_value, axis: int = 1):
  """Pads axis `axis` to a multiple of `size` and splits it into [n, size] (n leading)."""
  n = -(-x.shape[axis] // size)
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, n * size - x.shape[axis])
  x = jnp.pad(x, pad, constant_values=pad_value)
  x = x.reshape(x.shape[:axis] + (n, size) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _visible(q_pos_BC, q_seg_BC, k_pos_BU, k_seg_BU):
  """[B,1,C,1,U]: which keys of a chunk each query sees (broadcasts over K and G)."""
  vis_BCU = ((k_pos_BU[:, None, :] <= q_pos_BC[:, :, None])
             & (k_seg_BU[:, None, :] == q_seg_BC[:, :, None]))
  return vis_BCU[:, None, :, None, :]


def _pair_modes_ZW(q_pos_ZBC, q_seg_ZBC, k_pos_WBU, k_seg_WBU):
  """[Z,W] int32 per chunk pair: SKIP (no query may see any key), MASKED (some may) or FULL
  (every query sees every key: all keys at or before every query's position, one segment
  on both sides, so the mask would be all true and is left out). Both tests are
  conservative on per-chunk position and segment ranges, so SKIP is exactly all-invisible
  and FULL exactly all-visible; padded keys (huge positions) and padded queries (tiny
  ones) never make a pair FULL."""
  q_min, q_max = (f(q_pos_ZBC, axis=-1)[:, None] for f in (jnp.min, jnp.max))  # [Z,1,B]
  k_min, k_max = (f(k_pos_WBU, axis=-1)[None] for f in (jnp.min, jnp.max))      # [1,W,B]
  qs_lo, qs_hi = (f(q_seg_ZBC, axis=-1)[:, None] for f in (jnp.min, jnp.max))
  ks_lo, ks_hi = (f(k_seg_WBU, axis=-1)[None] for f in (jnp.min, jnp.max))
  needed = jnp.any((k_min <= q_max) & (ks_lo <= qs_hi) & (qs_lo <= ks_hi), axis=-1)
  full = jnp.all((k_max <= q_min) & (qs_lo == qs_hi) & (ks_lo == ks_hi) & (qs_lo == ks_lo),
                 axis=-1)
  return jnp.where(full, FULL, jnp.where(needed, MASKED, SKIP)).astype(jnp.int32)


def _forward_stats(q_ZBKCGD, k_WBKUD, v_WBKUD, q_pos_ZBC, q_seg_ZBC, k_pos_WBU, k_seg_WBU,
                   mode_ZW, scale):
  """Online softmax over key chunks: (m, l [Z,B,K,C,G], acc [Z,B,K,C,G,D]) fp32, where
  acc / l is the attention output of rows that see a key and m stays _NEG for rows that
  see none."""
  _, B, K, C, G, D = q_ZBKCGD.shape

  def per_query_chunk(xs):
    q, q_pos, q_seg, mode_W = xs

    def per_key_chunk(carry, ys):
      k, v, k_pos, k_seg, mode = ys

      def attend(carry, masked: bool):
        m, l, acc = carry
        s = jnp.einsum("bkcgd,bkud->bkcgu", q, k, preferred_element_type=jnp.float32) * scale
        if masked:
          s = jnp.where(_visible(q_pos, q_seg, k_pos, k_seg), s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(s - m_new[..., None])
        l = l * correction + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkcgu,bkud->bkcgd", p.astype(v.dtype), v,
                        preferred_element_type=jnp.float32)
        return m_new, l, acc * correction[..., None] + pv

      branches = (lambda c: c, functools.partial(attend, masked=True),
                  functools.partial(attend, masked=False))
      return jax.lax.switch(mode, branches, carry), None

    init = (jnp.full((B, K, C, G), _NEG, jnp.float32), jnp.zeros((B, K, C, G), jnp.float32),
            jnp.zeros((B, K, C, G, D), jnp.float32))
    out, _ = jax.lax.scan(per_key_chunk, init, (k_WBKUD, v_WBKUD, k_pos_WBU, k_seg_WBU,
                                                 mode_W))
    return out

  return jax.lax.map(per_query_chunk, (q_ZBKCGD, q_pos_ZBC, q_seg_ZBC, mode_ZW))


def _dot_operand(x):
  """x for a backward product: float32 when lowering for a CPU (see _flash_bwd), else as is."""
  from m1jax.ops.attention_impl import lowering_platform  # the impl module imports this one
  return x.astype(jnp.float32) if lowering_platform() == "cpu" else x


def _finish(m, l, acc, dtype):
  """(o [.., D] in `dtype`, lse) from the online-softmax stats; rows that saw no key get
  o = 0 and lse = +inf (their probabilities exp(s - lse) are then 0 in the backward)."""
  dead = m == _NEG
  o = jnp.where(dead[..., None], 0.0, acc / jnp.where(dead, 1.0, l)[..., None])
  lse = jnp.where(dead, jnp.inf, m + jnp.log(jnp.where(dead, 1.0, l)))
  return o.astype(dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _flash(q_ZBKCGD, k_WBKUD, v_WBKUD, q_pos_ZBC, q_seg_ZBC, k_pos_WBU, k_seg_WBU, mode_ZW,
           scale):
  stats = _forward_stats(q_ZBKCGD, k_WBKUD, v_WBKUD, q_pos_ZBC, q_seg_ZBC, k_pos_WBU,
                         k_seg_WBU, mode_ZW, scale)
  return _finish(*stats, q_ZBKCGD.dtype)


def _flash_fwd(q, k, v, q_pos, q_seg, k_pos, k_seg, mode, scale):
  o, lse = _flash(q, k, v, q_pos, q_seg, k_pos, k_seg, mode, scale)
  return (o, lse), (q, k, v, q_pos, q_seg, k_pos, k_seg, mode, o, lse)


def _flash_bwd(scale, res, cotangents):
  """Flash-attention backward: per key chunk, a pass over the query chunks recomputes
  p = exp(s - lse) and accumulates dK, dV for the key chunk and dQ for each query chunk.
  The lse output is a by-product for the caller's dead-row test; its cotangent is ignored."""
  q_Z, k_W, v_W, q_pos_Z, q_seg_Z, k_pos_W, k_seg_W, mode_ZW, o_Z, lse_Z = res
  do_Z = cotangents[0]
  # sum_u p_u dp_u = dO . O (the softmax-backward row term), once per query row.
  delta_Z = jnp.sum(do_Z.astype(jnp.float32) * o_Z.astype(jnp.float32), axis=-1)
  _, B, K, U, D = k_W.shape

  def per_key_chunk(dq_Z, ys):
    k, v, k_pos, k_seg, mode_Z = ys

    def per_query_chunk(carry, xs):
      q, do, lse, delta, q_pos, q_seg, mode = xs

      def grads(masked: bool):
        # Key-major [.., U, C, G] tiles: every big operand of the four products below is
        # then already in a matmul's natural layout. Query-major tiles made XLA:CPU copy-
        # transpose p and ds ([U, C*G] each) per chunk pair for dV, dK and dQ, which cost
        # more than the products themselves at head_dim 32 (WORKSPACE_NOTES.md, issue 16).
        # XLA:CPU has no bf16 x bf16 -> f32 kernel for some of these dot layouts ("Unsupported
        # element type for DotThunk"); there the operands, rounded to the input dtype as
        # elsewhere, go up to float32 (a bf16 product is exact in float32).
        q_, k_, v_, do_ = (_dot_operand(x) for x in (q, k, v, do))
        s_T = jnp.einsum("bkud,bkcgd->bkucg", k_, q_, preferred_element_type=jnp.float32)
        s_T = s_T * scale
        if masked:
          vis_T = jnp.moveaxis(_visible(q_pos, q_seg, k_pos, k_seg), -1, 2)  # [B,1,U,C,1]
          s_T = jnp.where(vis_T, s_T, _NEG)
        p_T = jnp.exp(s_T - lse[:, :, None])
        dv = jnp.einsum("bkucg,bkcgd->bkud", _dot_operand(p_T.astype(do.dtype)), do_,
                        preferred_element_type=jnp.float32)
        dp_T = jnp.einsum("bkud,bkcgd->bkucg", v_, do_, preferred_element_type=jnp.float32)
        ds_T = p_T * (dp_T - delta[:, :, None]) * scale
        # dQ^T = K^T dS^T keeps dS^T as the natural right operand (only the small [D, C*G]
        # result is transposed back).
        ds_T_k = _dot_operand(ds_T.astype(k.dtype))
        dq = jnp.moveaxis(jnp.einsum("bkud,bkucg->bkdcg", k_, ds_T_k,
                                     preferred_element_type=jnp.float32), 2, -1)
        dk = jnp.einsum("bkucg,bkcgd->bkud", _dot_operand(ds_T.astype(q.dtype)), q_,
                        preferred_element_type=jnp.float32)
        return dq, dk, dv

      def skip():
        return (jnp.zeros(q.shape, jnp.float32), jnp.zeros((B, K, U, D), jnp.float32),
                jnp.zeros((B, K, U, D), jnp.float32))

      dq, dk, dv = jax.lax.switch(mode, (skip, functools.partial(grads, masked=True),
                                         functools.partial(grads, masked=False)))
      return (carry[0] + dk, carry[1] + dv), dq

    zeros = jnp.zeros((B, K, U, D), jnp.float32)
    (dk, dv), dq_chunks = jax.lax.scan(
        per_query_chunk, (zeros, zeros),
        (q_Z, do_Z, lse_Z, delta_Z, q_pos_Z, q_seg_Z, mode_Z))
    return dq_Z + dq_chunks, (dk, dv)

  dq_Z, (dk_W, dv_W) = jax.lax.scan(
      per_key_chunk, jnp.zeros(q_Z.shape, jnp.float32),
      (k_W, v_W, k_pos_W, k_seg_W, mode_ZW.T))
  return (dq_Z.astype(q_Z.dtype), dk_W.astype(k_W.dtype), dv_W.astype(v_W.dtype),
          None, None, None, None, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def _query_chunks(q_BTHD, q_positions_BT, q_segment_ids_BT, K: int, block_q: int):
  B, T, H, D = q_BTHD.shape
  C = min(block_q, T)
  q_ZBCKGD = _chunk(q_BTHD.reshape(B, T, K, H // K, D), C, 0)
  q_ZBKCGD = q_ZBCKGD.transpose(0, 1, 3, 2, 4, 5)
  return (q_ZBKCGD, _chunk(q_positions_BT, C, _QUERY_PAD),
          _chunk(q_segment_ids_BT, C, 0))


def _key_chunks(k_BSKD, v_BSKD, k_positions_BS, k_segment_ids_BS, block_k: int):
  U = min(block_k, k_BSKD.shape[1])
  k_WBKUD, v_WBKUD = (_chunk(x, U, 0).transpose(0, 1, 3, 2, 4) for x in (k_BSKD, v_BSKD))
  return (k_WBKUD, v_WBKUD, _chunk(k_positions_BS, U, _KEY_PAD),
          _chunk(k_segment_ids_BS, U, 0))


def _unchunk_queries(o_ZBKCGD, T: int):
  Z, B, K, C, G, D = o_ZBKCGD.shape
  o_BTHD = o_ZBKCGD.transpose(1, 0, 3, 2, 4, 5).reshape(B, Z * C, K * G, D)
  return o_BTHD[:, :T]


def _mean_values_BKD(*v_BSKD) -> jax.Array:
  """Mean of V over every key slot: what a row that sees no key gets from the XLA path."""
  total = sum(jnp.sum(v.astype(jnp.float32), axis=1) for v in v_BSKD)
  return total / sum(v.shape[1] for v in v_BSKD)


def _with_dead_rows(o_BTHD, dead_BTH, mean_BKD):
  B, T, H, D = o_BTHD.shape
  K = mean_BKD.shape[1]
  fill_BTHD = jnp.broadcast_to(jnp.repeat(mean_BKD, H // K, axis=1)[:, None], (B, T, H, D))
  return jnp.where(dead_BTH[..., None], fill_BTHD.astype(o_BTHD.dtype), o_BTHD)


def blockwise_gqa_attention(q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array,
                            q_positions_BT: jax.Array, k_positions_BS: jax.Array,
                            q_segment_ids_BT: jax.Array | None = None,
                            k_segment_ids_BS: jax.Array | None = None, *,
                            block_q: int = DEFAULT_BLOCK_Q,
                            block_k: int = DEFAULT_BLOCK_K) -> jax.Array:
  """causal_gqa_attention's contract (same arguments, [B,T,H,D] in q's dtype), computed in
  query chunks of `block_q` and key chunks of `block_k`; differentiable (flash backward)."""
  B, T, H, D = q_BTHD.shape
  S, K = k_BSKD.shape[1], k_BSKD.shape[2]
  if q_segment_ids_BT is None:
    q_segment_ids_BT = jnp.zeros((B, T), jnp.int32)
    k_segment_ids_BS = jnp.zeros((B, S), jnp.int32)
  q_parts = _query_chunks(q_BTHD, q_positions_BT.astype(jnp.int32),
                          q_segment_ids_BT.astype(jnp.int32), K, block_q)
  k_parts = _key_chunks(k_BSKD, v_BSKD, k_positions_BS.astype(jnp.int32),
                        k_segment_ids_BS.astype(jnp.int32), block_k)
  mode_ZW = _pair_modes_ZW(q_parts[1], q_parts[2], k_parts[2], k_parts[3])
  o_Z, lse_Z = _flash(q_parts[0], k_parts[0], k_parts[1], q_parts[1], q_parts[2], k_parts[2],
                      k_parts[3], mode_ZW, D**-0.5)
  o_BTHD = _unchunk_queries(o_Z, T)
  dead_BTH = _unchunk_queries(jnp.isinf(lse_Z)[..., None], T)[..., 0]
  return _with_dead_rows(o_BTHD, dead_BTH, _mean_values_BKD(v_BSKD))


def blockwise_cached_gqa_attention(q_BTHD: jax.Array, k_cache_BSKD: jax.Array,
                                   v_cache_BSKD: jax.Array, k_new_BTKD: jax.Array,
                                   v_new_BTKD: jax.Array, q_positions_BT: jax.Array,
                                   cache_positions_BS: jax.Array, new_positions_BT: jax.Array,
                                   *, block_q: int = DEFAULT_BLOCK_Q,
                                   block_k: int = DEFAULT_BLOCK_K) -> jax.Array:
  """cached_gqa_attention's contract: one softmax over [cache slots ++ new tokens], the
  cache only read. Forward only (inference); empty cache chunks are skipped, so a long,
  mostly empty cache costs what its filled part does."""
  B, T, H, D = q_BTHD.shape
  K = k_cache_BSKD.shape[2]
  zeros_BT = jnp.zeros((B, T), jnp.int32)
  q_ZBKCGD, q_pos_ZBC, q_seg_ZBC = _query_chunks(q_BTHD, q_positions_BT.astype(jnp.int32),
                                                 zeros_BT, K, block_q)
  stats = []
  for k, v, pos in ((k_cache_BSKD, v_cache_BSKD, cache_positions_BS),
                    (k_new_BTKD, v_new_BTKD, new_positions_BT)):
    k_W, v_W, k_pos_W, k_seg_W = _key_chunks(k, v, pos.astype(jnp.int32),
                                             jnp.zeros(pos.shape, jnp.int32), block_k)
    mode_ZW = _pair_modes_ZW(q_pos_ZBC, q_seg_ZBC, k_pos_W, k_seg_W)
    stats.append(_forward_stats(q_ZBKCGD, k_W, v_W, q_pos_ZBC, q_seg_ZBC, k_pos_W, k_seg_W,
                                mode_ZW, D**-0.5))
  (m1, l1, acc1), (m2, l2, acc2) = stats
  # Merge the two partial softmaxes under their common max (rows dead in both keep _NEG).
  m = jnp.maximum(m1, m2)
  c1, c2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
  o_Z, lse_Z = _finish(m, l1 * c1 + l2 * c2, acc1 * c1[..., None] + acc2 * c2[..., None],
                       q_BTHD.dtype)
  o_BTHD = _unchunk_queries(o_Z, T)
  dead_BTH = _unchunk_queries(jnp.isinf(lse_Z)[..., None], T)[..., 0]
  return _with_dead_rows(o_BTHD, dead_BTH, _mean_values_BKD(v_cache_BSKD, v_new_BTKD))
