"""Post-norm DeepNorm decoder layer and the hybrid stack (docs/MODEL.md §3.2, §4.3).

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
  def __call__(self, x_BTM, slope_H, positions_BT, token_mask_BT, cache=None, cache_info=None,
               segment_ids_BT=None):
    """Returns (x_BTM, stats); with a `cache` entry, (x_BTM, stats, new cache entry).

    cache_info (cache mode only): {"index": [] int32 first slot written, "kv_positions_BS":
    [B,S_max] and "new_kv_positions_BT" int32 or None}; token_mask_BT then also masks padding
    out of lightning state. The new entry of a softmax layer holds only the T new K/V slots
    (the stack writes them into the cache, see _cached_stack).
    """
    cfg = self.config
    pdtype = P.param_dtype(cfg)
    h1 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="input_layernorm")(x_BTM)
    if self.attn_type == LINEAR_ATTENTION:
      if cache is None:
        a = LightningAttention(cfg, name="self_attn")(h1, slope_H,
                                                      segment_ids_BT=segment_ids_BT)
      else:
        a, cache = LightningAttention(cfg, name="self_attn")(h1, slope_H, cache, token_mask_BT)
      alpha, beta = cfg.layernorm_linear_attention_alpha, cfg.layernorm_linear_attention_beta
    elif self.attn_type == FULL_ATTENTION:
      if cache is None:
        a = SoftmaxAttention(cfg, name="self_attn")(h1, positions_BT,
                                                    segment_ids_BT=segment_ids_BT)
      else:
        a, cache = SoftmaxAttention(cfg, name="self_attn")(
            h1, positions_BT, cache, cache_info["index"], cache_info["kv_positions_BS"],
            new_kv_positions_BT=cache_info["new_kv_positions_BT"])
      alpha, beta = cfg.layernorm_full_attention_alpha, cfg.layernorm_full_attention_beta
    else:
      raise ValueError(f"DecoderLayer.attn_type: unknown attention type {self.attn_type!r}")
    # Post-norm (the release): the residual is the NORMED input; otherwise the raw input.
    x = alpha * (h1 if cfg.postnorm else x_BTM) + beta * a
    h2 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="post_attention_layernorm")(x)
    m, stats = SparseMoE(cfg, name="block_sparse_moe")(h2, token_mask_BT)
    out = cfg.layernorm_mlp_alpha * (h2 if cfg.postnorm else x) + cfg.layernorm_mlp_beta * m
    if cache is not None:
      return out.astype(x_BTM.dtype), stats, cache
    return out.astype(x_BTM.dtype), stats


class LayerGroup(nn.Module):
  """Consecutive decoder layers of the given types; stats are stacked over them."""
  config: ModelConfig
  attn_types: Sequence[int]

  @nn.compact
  def __call__(self, x_BTM, slopes_LH, positions_BT, token_mask_BT, cache=None,
               cache_info=None, segment_ids_BT=None):
    """(x_BTM, stats); with `cache` ({"layer_j": entry}) -> (x_BTM, (stats, new cache))."""
    if cache is not None:
      # Inference only: no remat (same param names), cache entries in and out per layer.
      all_stats, new_cache = [], {}
      for j, attn_type in enumerate(self.attn_types):
        x_BTM, stats, new_cache[f"layer_{j}"] = DecoderLayer(
            self.config, attn_type, name=f"layer_{j}")(
                x_BTM, slopes_LH[j], positions_BT, token_mask_BT, cache[f"layer_{j}"],
                cache_info)
        all_stats.append(stats)
      return x_BTM, (jax.tree.map(lambda *s: jnp.stack(s), *all_stats), new_cache)
    layer_cls = DecoderLayer
    if self.config.remat:
      # The policy names a jax.checkpoint_policies member (ModelConfig.remat_policy).
      policy = getattr(jax.checkpoint_policies, self.config.remat_policy)
      layer_cls = nn.remat(DecoderLayer, policy=policy)
    all_stats = []
    for j, attn_type in enumerate(self.attn_types):
      # Positional (None cache entries) because lifted remat takes no keyword arguments.
      x_BTM, stats = layer_cls(self.config, attn_type, name=f"layer_{j}")(
          x_BTM, slopes_LH[j], positions_BT, token_mask_BT, None, None, segment_ids_BT)
      all_stats.append(stats)
    return x_BTM, jax.tree.map(lambda *s: jnp.stack(s), *all_stats)


class HybridStack(nn.Module):
  """All decoder layers; returns (x_BTM, RouterStats with a leading [L] axis)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTM, positions_BT, token_mask_BT=None, cache=None, cache_info=None,
               segment_ids_BT=None):
    cfg = self.config
    L, H, p = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.layer_period
    slopes_LH = jnp.asarray(lightning_slopes(H, L), jnp.float32)
    if cache is not None:
      return _cached_stack(self, cfg, x_BTM, slopes_LH, positions_BT, token_mask_BT, cache,
                           cache_info)
    if not cfg.is_scanned:
      return LayerGroup(cfg, cfg.attn_type_list, name="layers")(
          x_BTM, slopes_LH, positions_BT, token_mask_BT, segment_ids_BT=segment_ids_BT)
    groups = L // p
    scanned = nn.scan(
        LayerGroup,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=groups,
        metadata_params={nn.PARTITION_NAME: P.LAYERS})
    # The two Nones fill the cache arguments, which training does not use.
    x_BTM, stats = scanned(cfg, cfg.attn_type_list[:p], name="groups")(
        x_BTM, slopes_LH.reshape(groups, p, H), positions_BT, token_mask_BT, None, None,
        segment_ids_BT)
    # [groups, p, ...] -> [L, ...], in global layer order.
    return x_BTM, jax.tree.map(lambda s: s.reshape((L,) + s.shape[2:]), stats)


def _cached_stack(parent, cfg, x_BTM, slopes_LH, positions_BT, token_mask_BT, cache,
                  cache_info):
  """HybridStack with a cache whose layers mirror the params layout (see m1jax.inference).

  Scanned: cache {"groups": {"layer_j": leaves with a leading [L/p] axis}} enters the scan as
  xs (read only); the ys are the lightning states and only the T new K/V slots of each
  softmax layer, which are then written into the stacked K/V at slot cache_info["index"] by
  one dynamic_update_slice per leaf. Carrying the whole K/V through ys instead copied the
  full cache every step (decode time grew ~10x from 8K to 64K on CPU); written after the
  scan, the update aliases the donated buffer and costs O(T). Returns (x_BTM, stats [L, ...],
  new cache layers).
  """
  L, H, p = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.layer_period
  if not cfg.is_scanned:
    x_BTM, (stats, new) = LayerGroup(cfg, cfg.attn_type_list, name="layers", parent=parent)(
        x_BTM, slopes_LH, positions_BT, token_mask_BT, cache["layers"], cache_info)
    return x_BTM, stats, {"layers": _write_new_slots(cache["layers"], new, cache_info["index"])}
  groups = L // p
  scanned = nn.scan(
      LayerGroup,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, nn.broadcast, nn.broadcast, 0, nn.broadcast),
      length=groups,
      metadata_params={nn.PARTITION_NAME: P.LAYERS})
  x_BTM, (stats, new) = scanned(cfg, cfg.attn_type_list[:p], name="groups", parent=parent)(
      x_BTM, slopes_LH.reshape(groups, p, H), positions_BT, token_mask_BT, cache["groups"],
      cache_info)
  layers = {"groups": _write_new_slots(cache["groups"], new, cache_info["index"])}
  return x_BTM, jax.tree.map(lambda s: s.reshape((L,) + s.shape[2:]), stats), layers


def _write_new_slots(old: Any, new: Any, index: jax.Array) -> Any:
  """Cache layers after a call: K/V leaves [..., B, S_max, K, D] get the new [..., B, T, K, D]
  slots at `index` (axis -3); lightning states are replaced by the new ones."""
  def write(path, old_leaf, new_leaf):
    if getattr(path[-1], "key", None) not in ("k", "v"):
      return new_leaf
    start = (0,) * (old_leaf.ndim - 3) + (index, 0, 0)
    return jax.lax.dynamic_update_slice(old_leaf, new_leaf.astype(old_leaf.dtype), start)
  return jax.tree_util.tree_map_with_path(write, old, new)


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
