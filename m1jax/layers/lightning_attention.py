"""The lightning (linear) attention layer (docs/MODEL.md §6).

qkv = silu(h @ W_qkv) with a per-head interleaved [q|k|v] layout, the linear-attention
operator with decay exp(-slope) per head, one RMSNorm over all H*D features (eps 1e-6), a
sigmoid gate computed from the layer input, and out_proj. No RoPE, no 1/sqrt(D) scaling.

Sequence parallelism: without a cache (training, scoring), when the current mesh splits
`sequence` (jax.set_mesh), the operator runs as LASP-2 (m1jax/ops/linear_attention_sp.py)
inside a shard_map whose batch and head axes come from the active logical axis rules. The
same shard_map (one shard) carries a Pallas kernel on any multi-device mesh, since XLA cannot
partition a Pallas call.

Padding (docs/MODEL.md §6.6): k and v of tokens whose token_mask_BT is 0 are zeroed before the
operator, with or without a cache, so padding adds nothing to the state. Rows are
left-padded, so a row's state is still exactly zero at its first real token.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax.sharding import AxisType

from m1jax import ops
from m1jax.config import ModelConfig
from m1jax.layers import params as lp
from m1jax.layers.norms import RMSNorm
from m1jax.ops.linear_attention import runs_kernel
from m1jax.ops.linear_attention_sp import (SEQUENCE_AXIS, dividing_axes,
                                           lightning_attention_sp, sequence_shards)


def _needs_shard_map(q, k, v, slope_H, cfg: ModelConfig, segment_ids_BT) -> bool:
  """LASP-2's shard_map is needed when the mesh splits `sequence`, and also at sequence=1
  when the operator would run a Pallas kernel on a multi-device mesh: XLA cannot partition a
  Pallas call, and at one shard LASP-2 is exactly the per-device call (its all-gather is of
  one state)."""
  if sequence_shards() > 1:
    return True
  mesh = jax.sharding.get_abstract_mesh()
  if (mesh.empty or SEQUENCE_AXIS not in mesh.axis_names or math.prod(mesh.shape.values()) == 1
      or any(t == AxisType.Manual for t in mesh.axis_types)):
    return False
  return runs_kernel(cfg.lightning_impl, q, k, v, slope_H, None, cfg.block_size, segment_ids_BT)


def _lightning_cache_free(q, k, v, slope_H, cfg: ModelConfig, segment_ids_BT,
                          initializing: bool):
  """The operator over a whole row: LASP-2 when the mesh splits `sequence`, else one call.
  `model.init` (only shapes matter; its dummy rows may be 1 token) takes the plain call."""
  if initializing or not _needs_shard_map(q, k, v, slope_H, cfg, segment_ids_BT):
    return ops.lightning_attention(q, k, v, slope_H, impl=cfg.lightning_impl,
                                   block_size=cfg.block_size, segment_ids=segment_ids_BT)
  # B and H split as the rules lay q out (without rules, or when they do not divide:
  # replicated, still exact).
  batch_axes, _, head_axes, _ = nn.logical_to_mesh_axes(
      (lp.BATCH, lp.LENGTH, lp.HEADS, lp.HEAD_DIM))
  b, _, h, _ = q.shape
  return lightning_attention_sp(q, k, v, slope_H, impl=cfg.lightning_impl,
                                block_size=cfg.block_size, segment_ids=segment_ids_BT,
                                batch_axes=dividing_axes(b, batch_axes),
                                head_axes=dividing_axes(h, head_axes))


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
    # The 3 axis is {q, k, v} within each head; splitting it copies either the weight or
    # the activations, and we copy the smaller. Many tokens (prefill, training): one matmul
    # per projection on a weight slice, because slicing the [B,T,H,3,D] product made its
    # backward rebuild a strided cotangent that cost XLA:CPU more than the matmuls. Fewer
    # tokens than M (decode): one matmul on the whole weight, then slice the tiny product;
    # the weight slices were ~1.5 ms of each 3.7 ms CPU decode step (WORKSPACE_NOTES.md,
    # issue 16). Either way each output element is the same dot product.
    w_qkv_MH3D = w_qkv.astype(dtype).reshape(M, H, 3, D)
    B, T = h_BTM.shape[:2]
    if B * T < M:
      qkv_BTH3D = jnp.einsum("btm,mhcd->bthcd", h, w_qkv_MH3D)
      qkv = (qkv_BTH3D[:, :, :, i] for i in range(3))
    else:
      qkv = (jnp.einsum("btm,mhd->bthd", h, w_qkv_MH3D[:, :, i]) for i in range(3))
    q, k, v = (lp.constrain(jax.nn.silu(x), (lp.BATCH, lp.LENGTH, lp.HEADS, lp.HEAD_DIM))
               for x in qkv)
    if token_mask_BT is not None:
      keep_BT11 = token_mask_BT[:, :, None, None].astype(k.dtype)
      k, v = k * keep_BT11, v * keep_BT11
    if cache is None:
      o_BTHD, _ = _lightning_cache_free(q, k, v, slope_H, cfg, segment_ids_BT,
                                        self.is_initializing())
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
