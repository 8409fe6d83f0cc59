"""The hybrid inference cache: a constant-size fp32 state per lightning layer and a KV cache
per softmax layer (docs/MODEL.md §6.3 recurrent form, §5.1 cached positions, §6.6).

Layout. `layers` mirrors the params of the decoder stack, so the scanned stack carries it as
scan xs/ys:
  scanned:  {"groups": {"layer_j": entry with a leading [L/p] axis}}, layer l = g*p + j
  unrolled: {"layers": {"layer_l": entry}}
with entry {"state": [B,H,D,D] float32} for a lightning layer and {"k", "v": [B,S_max,K,D]}
(compute dtype) for a softmax layer.

Rows are LEFT-padded: slot s of every row holds the token written by the s-th step, and a
row's real tokens are the slots [index - lengths[b], index). Left padding keeps the
lightning state exact (padded tokens have k = v = 0 and come before any real token, so the
state is still exactly zero when the row starts, with no spurious decay), and every row writes
its next token to the same slot `index`, a scalar.
"""
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp

from m1jax.config import FULL_ATTENTION, ModelConfig
from m1jax.layers import params as lp
from m1jax.layers.cache_info import EMPTY_POSITION, CacheInfo


@flax.struct.dataclass
class HybridCache:
  """layers: see the module docstring; lengths [B] int32 real tokens per row (prompt +
  generated); index [] int32 slots written so far (the same for every row)."""
  layers: Any
  lengths: jax.Array
  index: jax.Array

  @property
  def batch_size(self) -> int:
    return self.lengths.shape[0]

  @property
  def max_len(self) -> Optional[int]:
    """S_max, the KV capacity; None for a lightning-only model (its cache has no length)."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(self.layers):
      if getattr(path[-1], "key", None) == "k":
        return leaf.shape[-3]
    return None

  def step_inputs(self, num_new: int, token_mask_BT: Optional[jax.Array]):
    """For a call adding `num_new` slots: (token_mask_BT, positions_BT, CacheInfo).

    Positions continue each row's cached length (padded slots get negative positions, which
    only padded queries use). The CacheInfo holds the write slot `index` and the key
    position of every slot ALREADY in the cache, `kv_positions_BS` [B,S_max] (EMPTY_POSITION
    where empty, padded or not yet written); the new tokens' key positions are their
    positions, EMPTY_POSITION for padding (m1jax.layers.cache_info.key_positions). Softmax
    layers attend over the two parts separately, so the KV cache is only read inside the
    layer stack and the new slots are written once, in place, after it.
    """
    B = self.batch_size
    if token_mask_BT is None:
      token_mask_BT = jnp.ones((B, num_new), jnp.int32)
    lengths_B, index = self._advanced(token_mask_BT)
    pad_B = index - lengths_B  # padded slots per row after this call
    slots_T = self.index + jnp.arange(num_new, dtype=jnp.int32)
    positions_BT = slots_T[None, :] - pad_B[:, None]
    kv_positions_BS = None
    if self.max_len is not None:
      slots_S = jnp.arange(self.max_len, dtype=jnp.int32)[None, :]
      valid_BS = (slots_S >= pad_B[:, None]) & (slots_S < self.index)
      kv_positions_BS = jnp.where(valid_BS, slots_S - pad_B[:, None], EMPTY_POSITION)
    return token_mask_BT, positions_BT, CacheInfo(index=self.index,
                                                  kv_positions_BS=kv_positions_BS)

  def advance(self, layers: Any, token_mask_BT: jax.Array) -> "HybridCache":
    """The cache after a call that wrote `token_mask_BT.shape[1]` slots."""
    lengths_B, index = self._advanced(token_mask_BT)
    return HybridCache(layers=layers, lengths=lengths_B, index=index)

  def _advanced(self, token_mask_BT):
    added_B = jnp.sum(token_mask_BT.astype(jnp.int32), axis=1)
    return self.lengths + added_B, self.index + jnp.int32(token_mask_BT.shape[1])


def _layer_entry(config: ModelConfig, attn_type: int, batch: int, max_len: int, kv_dtype,
                 lead: tuple) -> dict:
  H, K, D = config.num_attention_heads, config.num_key_value_heads, config.head_dim
  if attn_type == FULL_ATTENTION:
    # Two separate buffers: the decode step donates them.
    shape = lead + (batch, max_len, K, D)
    return {"k": jnp.zeros(shape, kv_dtype), "v": jnp.zeros(shape, kv_dtype)}
  return {"state": jnp.zeros(lead + (batch, H, D, D), jnp.float32)}


def init_cache(config: ModelConfig, batch_size: int, max_len: int,
               kv_dtype: Optional[Any] = None) -> HybridCache:
  """An empty cache for `batch_size` rows of up to `max_len` tokens (prompt + generated).

  The lightning states are [B,H,D,D] float32 whatever max_len is; only the softmax layers'
  K/V grow with it. kv_dtype defaults to the config's compute dtype.
  """
  if batch_size < 1 or max_len < 1:
    raise ValueError(f"init_cache: batch_size and max_len must be >= 1; got {batch_size}, "
                     f"{max_len}")
  kv_dtype = lp.compute_dtype(config) if kv_dtype is None else kv_dtype
  types, p = config.attn_type_list, config.layer_period
  if config.is_scanned:
    lead = (config.num_hidden_layers // p,)
    layers = {"groups": {f"layer_{j}": _layer_entry(config, types[j], batch_size, max_len,
                                                     kv_dtype, lead) for j in range(p)}}
  else:
    layers = {"layers": {f"layer_{l}": _layer_entry(config, t, batch_size, max_len, kv_dtype, ())
                         for l, t in enumerate(types)}}
  return HybridCache(layers=layers, lengths=jnp.zeros((batch_size,), jnp.int32),
                     index=jnp.zeros((), jnp.int32))


def cache_bytes(cache: HybridCache) -> dict:
  """Bytes held by the lightning states and by the KV cache (for the docs and benchmarks)."""
  out = {"lightning_state": 0, "kv": 0}
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache.layers):
    kind = "lightning_state" if getattr(path[-1], "key", None) == "state" else "kv"
    out[kind] += leaf.size * leaf.dtype.itemsize
  return out
