"""Post-norm DeepNorm decoder layer and the hybrid stack (SPEC.md §2, §3.2).

The stack is driven by `attn_type_list`. When the list repeats with period p (the release:
p = 8, seven lightning layers then one softmax layer), the p-layer group is `nn.scan`ned
L/p times, so compile time does not grow with depth. The per-layer decay slopes depend on
the GLOBAL layer index, so they enter the scan as inputs ([L/p, p, H]), never as Python
constants. A non-periodic list falls back to an unrolled stack.

Parameter layout under the stack module:
  scanned:  {"groups": {"layer_j": <leaves with a leading [L/p] axis>}}, layer l = g*p + j
  unrolled: {"layers": {"layer_l": <leaves>}}
`split_layer_params` / `merge_layer_params` convert between either layout and a flat list
of L per-layer trees (used by HF conversion and by the scan-vs-unrolled test).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m1jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig, lightning_slopes
from m1jax.layers import params as P
from m1jax.layers.lightning_attention import LightningAttention
from m1jax.layers.moe import SparseMoE
from m1jax.layers.norms import RMSNorm
from m1jax.layers.softmax_attention import SoftmaxAttention


class DecoderLayer(nn.Module):
  """x -> (alpha*h1 + beta*Attn(h1)) -> (alpha*h2 + beta*MoE(h2)), h = RMSNorm(.)."""
  config: ModelConfig
  attn_type: int

  @nn.compact
  def __call__(self, x_BTM, slope_H, positions_BT, token_mask_BT):
    cfg = self.config
    pdtype = P.param_dtype(cfg)
    h1 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="input_layernorm")(x_BTM)
    if self.attn_type == LINEAR_ATTENTION:
      a = LightningAttention(cfg, name="self_attn")(h1, slope_H)
      alpha, beta = cfg.layernorm_linear_attention_alpha, cfg.layernorm_linear_attention_beta
    elif self.attn_type == FULL_ATTENTION:
      a = SoftmaxAttention(cfg, name="self_attn")(h1, positions_BT)
      alpha, beta = cfg.layernorm_full_attention_alpha, cfg.layernorm_full_attention_beta
    else:
      raise ValueError(f"DecoderLayer.attn_type: unknown attention type {self.attn_type!r}")
    # Post-norm (the release): the residual is the NORMED input; otherwise the raw input.
    x = alpha * (h1 if cfg.postnorm else x_BTM) + beta * a
    h2 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="post_attention_layernorm")(x)
    m, stats = SparseMoE(cfg, name="block_sparse_moe")(h2, token_mask_BT)
    out = cfg.layernorm_mlp_alpha * (h2 if cfg.postnorm else x) + cfg.layernorm_mlp_beta * m
    return out.astype(x_BTM.dtype), stats


class LayerGroup(nn.Module):
  """Consecutive decoder layers of the given types; stats are stacked over them."""
  config: ModelConfig
  attn_types: Sequence[int]

  @nn.compact
  def __call__(self, x_BTM, slopes_LH, positions_BT, token_mask_BT):
    layer_cls = nn.remat(DecoderLayer) if self.config.remat else DecoderLayer
    all_stats = []
    for j, attn_type in enumerate(self.attn_types):
      x_BTM, stats = layer_cls(self.config, attn_type, name=f"layer_{j}")(
          x_BTM, slopes_LH[j], positions_BT, token_mask_BT)
      all_stats.append(stats)
    return x_BTM, jax.tree.map(lambda *s: jnp.stack(s), *all_stats)


class HybridStack(nn.Module):
  """All decoder layers; returns (x_BTM, RouterStats with a leading [L] axis)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTM, positions_BT, token_mask_BT=None):
    cfg = self.config
    L, H, p = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.layer_period
    slopes_LH = jnp.asarray(lightning_slopes(H, L), jnp.float32)
    if not cfg.is_scanned:
      return LayerGroup(cfg, cfg.attn_type_list, name="layers")(
          x_BTM, slopes_LH, positions_BT, token_mask_BT)
    groups = L // p
    scanned = nn.scan(
        LayerGroup,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast),
        length=groups,
        metadata_params={nn.PARTITION_NAME: P.LAYERS})
    x_BTM, stats = scanned(cfg, cfg.attn_type_list[:p], name="groups")(
        x_BTM, slopes_LH.reshape(groups, p, H), positions_BT, token_mask_BT)
    # [groups, p, ...] -> [L, ...], in global layer order.
    return x_BTM, jax.tree.map(lambda s: s.reshape((L,) + s.shape[2:]), stats)


def split_layer_params(stack_params: Any, config: ModelConfig) -> list[Any]:
  """The stack's params (either layout) -> a list of L per-layer param trees."""
  L, p = config.num_hidden_layers, config.layer_period
  if config.is_scanned:
    groups = stack_params["groups"]
    return [jax.tree.map(lambda a, g=l // p: a[g], groups[f"layer_{l % p}"]) for l in range(L)]
  return [stack_params["layers"][f"layer_{l}"] for l in range(L)]


def merge_layer_params(per_layer: Sequence[Any], config: ModelConfig) -> dict:
  """Inverse of split_layer_params: L per-layer trees -> the stack's param layout."""
  L, p = config.num_hidden_layers, config.layer_period
  if len(per_layer) != L:
    raise ValueError(f"merge_layer_params: got {len(per_layer)} layers, config has {L}")
  if not config.is_scanned:
    return {"layers": {f"layer_{l}": per_layer[l] for l in range(L)}}
  stack = np.stack if all(isinstance(x, np.ndarray)
                          for x in jax.tree.leaves(per_layer[0])) else jnp.stack
  return {"groups": {
      f"layer_{j}": jax.tree.map(lambda *a: stack(a), *per_layer[j::p]) for j in range(p)}}
