"""The lightning (linear) attention layer (docs/MODEL.md §6).

qkv = silu(h @ W_qkv) with a per-head interleaved [q|k|v] layout, the linear-attention
operator with decay exp(-slope) per head, one RMSNorm over all H*D features (eps 1e-6), a
sigmoid gate computed from the layer input, and out_proj. No RoPE, no 1/sqrt(D) scaling.

Padding (docs/MODEL.md §6.6): k and v of tokens whose token_mask_BT is 0 are zeroed before the
operator, with or without a cache, so padding adds nothing to the state. Rows are
left-padded, so a row's state is still exactly zero at its first real token.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax import ops
from m1jax.config import ModelConfig
from m1jax.layers import params as lp
from m1jax.layers.norms import RMSNorm


class LightningAttention(nn.Module):
  """Lightning attention for one layer; `slope_H` is that layer's per-head decay rate."""
  config: ModelConfig

  @nn.compact
  def __call__(self, h_BTM: jax.Array, slope_H: jax.Array, token_mask_BT=None, cache=None,
               segment_ids_BT=None):
    """Returns (y_BTM, new cache): with `cache` ({"state": [B,H,D,D] fp32}) the state after
    these tokens (a single token uses the recurrent decode step); without, None.

    segment_ids_BT (packed training rows, no cache): the state resets at each document start.
    """
    cfg = self.config
    M, H, D = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
    dtype, pdtype, init = lp.compute_dtype(cfg), lp.param_dtype(cfg), lp.kernel_init(cfg)
    # The kernel keeps the checkpoint's column order (head, {q,k,v}, dim) intact, so a tensor
    # -parallel split over heads gives every shard whole heads.
    w_qkv = lp.logical_param(self, "qkv_proj", init, (M, H, 3 * D),
                             (lp.EMBED, lp.HEADS, lp.HEAD_DIM), pdtype)
    w_gate = lp.logical_param(self, "output_gate", init, (M, H, D),
                              (lp.EMBED, lp.HEADS, lp.HEAD_DIM), pdtype)
    w_out = lp.logical_param(self, "out_proj", init, (H, D, M),
                             (lp.HEADS, lp.HEAD_DIM, lp.EMBED), pdtype)
    h = h_BTM.astype(dtype)
    # One matmul for q, k and v; the 3 axis is {q, k, v} within each head.
    w_qkv_MH3D = w_qkv.astype(dtype).reshape(M, H, 3, D)
    qkv_BTH3D = jax.nn.silu(jnp.tensordot(h, w_qkv_MH3D, axes=1))
    q, k, v = (lp.constrain(qkv_BTH3D[:, :, :, i], (lp.BATCH, lp.LENGTH, lp.HEADS, lp.HEAD_DIM))
               for i in range(3))
    if token_mask_BT is not None:
      keep_BT11 = token_mask_BT[:, :, None, None].astype(k.dtype)
      k, v = k * keep_BT11, v * keep_BT11
    if cache is None:
      o_BTHD, _ = ops.lightning_attention(q, k, v, slope_H, impl=cfg.lightning_impl,
                                          block_size=cfg.block_size, segment_ids=segment_ids_BT)
    elif q.shape[1] == 1:
      o_BHD, state = ops.lightning_decode_step(q[:, 0], k[:, 0], v[:, 0], slope_H,
                                               cache["state"])
      o_BTHD, cache = o_BHD[:, None], {"state": state}
    else:
      o_BTHD, state = ops.lightning_attention(q, k, v, slope_H, initial_state=cache["state"],
                                              impl=cfg.lightning_impl, block_size=cfg.block_size)
      cache = {"state": state}
    o_BTHD = RMSNorm(cfg.lightning_norm_eps, axes=(lp.HEADS, lp.HEAD_DIM), param_dtype=pdtype,
                     name="norm")(o_BTHD)
    gate_BTHD = jax.nn.sigmoid(jnp.einsum("btm,mhd->bthd", h, w_gate.astype(dtype)))
    y_BTM = jnp.einsum("bthd,hdm->btm", gate_BTHD * o_BTHD, w_out.astype(dtype))
    return y_BTM, cache
