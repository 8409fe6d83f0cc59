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

Call contract, the same for every layer module, with or without a cache:
  module(..., cache=None, cache_info=None) -> (output, new_cache)
  output: y_BTM for LightningAttention and SoftmaxAttention; (x_BTM, RouterStats) for
    DecoderLayer, LayerGroup and HybridStack (stats stacked over their layers);
  new_cache: None when `cache` is None (training, scoring); otherwise the layer's entry
    after these tokens, in the cache's own layout (m1jax/inference/cache.py): a lightning
    state {"state"}, a softmax layer's T NEW K/V slots {"k", "v": [B,T,K,D]}, a group's
    {"layer_j": entry}; HybridStack writes the new slots into the full K/V at
    cache_info.index and returns the whole updated `layers` tree.
  cache_info: a CacheInfo (m1jax/layers/cache_info.py), the same for every layer.
  token_mask_BT (1 = real token, rows LEFT-padded) keeps padding out of everything with or
  without a cache: lightning k, v are zeroed, padded tokens are no softmax key, and the MoE
  statistics skip them.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m1jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig, lightning_slopes
from m1jax.layers import params as lp
from m1jax.layers.cache_info import CacheInfo
from m1jax.layers.lightning_attention import LightningAttention
from m1jax.layers.moe import SparseMoE
from m1jax.layers.norms import RMSNorm
from m1jax.layers.softmax_attention import SoftmaxAttention


class DecoderLayer(nn.Module):
  """x -> (alpha*h1 + beta*Attn(h1)) -> (alpha*h2 + beta*MoE(h2)), h = RMSNorm(.)."""
  config: ModelConfig
  attn_type: int

  @nn.compact
  def __call__(self, x_BTM, slope_H, positions_BT, token_mask_BT=None, cache=None,
               cache_info: Optional[CacheInfo] = None, segment_ids_BT=None):
    """Returns ((x_BTM, stats), new cache entry); see the module docstring."""
    cfg = self.config
    pdtype = lp.param_dtype(cfg)
    # Layer boundaries (inside the scan too) keep the batch layout: batch over data/fsdp/
    # expert, length over sequence, features whole.
    x_BTM = lp.constrain(x_BTM, (lp.BATCH, lp.LENGTH, lp.EMBED))
    h1 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="input_layernorm")(x_BTM)
    if self.attn_type == LINEAR_ATTENTION:
      a, cache = LightningAttention(cfg, name="self_attn")(h1, slope_H, token_mask_BT, cache,
                                                           segment_ids_BT)
      alpha, beta = cfg.layernorm_linear_attention_alpha, cfg.layernorm_linear_attention_beta
    elif self.attn_type == FULL_ATTENTION:
      a, cache = SoftmaxAttention(cfg, name="self_attn")(h1, positions_BT, token_mask_BT, cache,
                                                         cache_info, segment_ids_BT)
      alpha, beta = cfg.layernorm_full_attention_alpha, cfg.layernorm_full_attention_beta
    else:
      raise ValueError(f"DecoderLayer.attn_type: unknown attention type {self.attn_type!r}")
    # Post-norm (the release): the residual is the NORMED input; otherwise the raw input.
    x = alpha * (h1 if cfg.postnorm else x_BTM) + beta * a
    h2 = RMSNorm(cfg.rms_norm_eps, param_dtype=pdtype, name="post_attention_layernorm")(x)
    m, stats = SparseMoE(cfg, name="block_sparse_moe")(h2, token_mask_BT)
    out = cfg.layernorm_mlp_alpha * (h2 if cfg.postnorm else x) + cfg.layernorm_mlp_beta * m
    out = lp.constrain(out.astype(x_BTM.dtype), (lp.BATCH, lp.LENGTH, lp.EMBED))
    return (out, stats), cache


class LayerGroup(nn.Module):
  """Consecutive decoder layers of the given types; stats are stacked over them."""
  config: ModelConfig
  attn_types: Sequence[int]

  @nn.compact
  def __call__(self, x_BTM, slopes_LH, positions_BT, token_mask_BT=None, cache=None,
               cache_info: Optional[CacheInfo] = None, segment_ids_BT=None):
    """Returns ((x_BTM, stats [len(attn_types), ...]), new cache {"layer_j": entry})."""
    layer_cls = DecoderLayer
    if self.config.remat and cache is None:
      # Training only (inference has no backward pass). Same param names either way. The
      # policy names a jax.checkpoint_policies member (ModelConfig.remat_policy).
      policy = getattr(jax.checkpoint_policies, self.config.remat_policy)
      layer_cls = nn.remat(DecoderLayer, policy=policy)
    all_stats, new_cache = [], {}
    for j, attn_type in enumerate(self.attn_types):
      entry = None if cache is None else cache[f"layer_{j}"]
      # Positional, because lifted remat takes no keyword arguments.
      (x_BTM, stats), new_cache[f"layer_{j}"] = layer_cls(
          self.config, attn_type, name=f"layer_{j}")(
              x_BTM, slopes_LH[j], positions_BT, token_mask_BT, entry, cache_info,
              segment_ids_BT)
      all_stats.append(stats)
    stats = jax.tree.map(lambda *s: jnp.stack(s), *all_stats)
    return (x_BTM, stats), (None if cache is None else new_cache)


class HybridStack(nn.Module):
  """All decoder layers; see the module docstring for the call contract."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BTM, positions_BT, token_mask_BT=None, cache=None,
               cache_info: Optional[CacheInfo] = None, segment_ids_BT=None):
    """Returns ((x_BTM, RouterStats with a leading [L] axis), new cache layers)."""
    cfg = self.config
    slopes_LH = jnp.asarray(lightning_slopes(cfg.num_attention_heads, cfg.num_hidden_layers),
                            jnp.float32)
    key = "groups" if cfg.is_scanned else "layers"
    entries = None if cache is None else cache[key]
    args = (positions_BT, token_mask_BT, entries, cache_info, segment_ids_BT)
    if cfg.is_scanned:
      (x_BTM, stats), new = _scanned_groups(self, cfg, x_BTM, slopes_LH, *args)
    else:
      (x_BTM, stats), new = LayerGroup(cfg, cfg.attn_type_list, name="layers")(
          x_BTM, slopes_LH, *args)
    if cache is None:
      return (x_BTM, stats), None
    return (x_BTM, stats), {key: _write_new_slots(entries, new, cache_info.index)}


def _scanned_groups(parent, cfg, x_BTM, slopes_LH, positions_BT, token_mask_BT, cache,
                    cache_info, segment_ids_BT):
  """The p-layer group nn.scan'ned L/p times: params, slopes and cache entries carry a leading
  [L/p] axis; positions, masks and cache_info are broadcast. With a cache, the ys are the
  new lightning states and only the T new K/V slots of each softmax layer (see
  _write_new_slots). Returns ((x_BTM, stats [L, ...]), new cache entries or None).
  """
  L, H, p = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.layer_period
  groups = L // p

  def body(group, x_BTM, slopes_LH, cache, positions_BT, token_mask_BT, cache_info,
           segment_ids_BT):
    (x_BTM, stats), new_cache = group(x_BTM, slopes_LH, positions_BT, token_mask_BT, cache,
                                      cache_info, segment_ids_BT)
    return x_BTM, (stats, new_cache)

  scan = nn.scan(
      body,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
      length=groups,
      metadata_params={nn.PARTITION_NAME: lp.LAYERS})
  x_BTM, (stats, new) = scan(
      LayerGroup(cfg, cfg.attn_type_list[:p], name="groups", parent=parent),
      x_BTM, slopes_LH.reshape(groups, p, H), cache, positions_BT, token_mask_BT, cache_info,
      segment_ids_BT)
  # [groups, p, ...] -> [L, ...], in global layer order.
  return (x_BTM, jax.tree.map(lambda s: s.reshape((L,) + s.shape[2:]), stats)), new


def _write_new_slots(old: Any, new: Any, index: jax.Array) -> Any:
  """Cache layers after a call: K/V leaves [..., B, S_max, K, D] get the new [..., B, T, K, D]
  slots at `index` (axis -3); lightning states are replaced by the new ones.

  Why after the stack rather than inside each layer: the scan then only reads the K/V (as
  xs), and its ys hold the T new slots only. Carrying the whole K/V through ys copied the
  full cache every step (decode time grew ~10x from 8K to 64K on CPU); written here, the
  update aliases the donated buffer and costs O(T).
  """
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
