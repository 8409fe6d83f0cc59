"""The layers' call contract: every module returns (output, new_cache), new_cache None
without a cache, and otherwise in the cache's own layout. Shapes only (jax.eval_shape)."""
import dataclasses

import jax
import jax.numpy as jnp
import pytest

from m1jax.config import ModelConfig
from m1jax.inference import init_cache
from m1jax.layers.cache_info import CacheInfo
from m1jax.layers.decoder import DecoderLayer, HybridStack
from m1jax.layers.lightning_attention import LightningAttention
from m1jax.layers.moe import RouterStats
from m1jax.layers.softmax_attention import SoftmaxAttention
from tests.helpers import tiny_config

B, T, S = 2, 5, 16


def _config(attn_types) -> ModelConfig:
  return tiny_config(attn_types, block_size=4)


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def _output_and_cache(module, *args):
  """(output, new_cache) shapes of module(*args), params initialised on the way."""
  out, _ = jax.eval_shape(lambda: module.init_with_output(jax.random.key(0), *args))
  return out


def test_cache_info_is_a_frozen_pytree():
  info = CacheInfo(index=jnp.int32(3), kv_positions_BS=jnp.zeros((B, S), jnp.int32))
  assert len(jax.tree.leaves(info)) == 2
  assert jax.jit(lambda i: i)(info).index == 3
  with pytest.raises(dataclasses.FrozenInstanceError):
    info.index = jnp.int32(4)


def test_attention_layers_return_output_and_cache():
  cfg = _config((0, 1))
  M, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  h = jnp.zeros((B, T, M))
  positions = jnp.zeros((B, T), jnp.int32)
  mask = jnp.ones((B, T), jnp.int32)
  slope = jnp.ones((H,))
  y, cache = _output_and_cache(LightningAttention(cfg), h, slope)
  assert y.shape == (B, T, M) and cache is None
  state = {"state": jnp.zeros((B, H, D, D))}
  y, cache = _output_and_cache(LightningAttention(cfg), h, slope, mask, state)
  assert y.shape == (B, T, M) and _shapes(cache) == _shapes(state)
  y, cache = _output_and_cache(SoftmaxAttention(cfg), h, positions)
  assert y.shape == (B, T, M) and cache is None
  kv = {"k": jnp.zeros((B, S, K, D)), "v": jnp.zeros((B, S, K, D))}
  info = CacheInfo(index=jnp.int32(0), kv_positions_BS=jnp.zeros((B, S), jnp.int32))
  y, cache = _output_and_cache(SoftmaxAttention(cfg), h, positions, mask, kv, info)
  # Only the T new slots come back; the stack writes them at info.index.
  assert y.shape == (B, T, M)
  assert _shapes(cache) == {"k": ((B, T, K, D), jnp.float32), "v": ((B, T, K, D), jnp.float32)}


@pytest.mark.parametrize("attn_type", [0, 1], ids=["lightning", "softmax"])
def test_decoder_layer_returns_output_and_cache(attn_type):
  cfg = _config((attn_type,))
  x = jnp.zeros((B, T, cfg.hidden_size))
  positions = jnp.zeros((B, T), jnp.int32)
  (x_out, stats), cache = _output_and_cache(DecoderLayer(cfg, attn_type), x, jnp.ones((4,)),
                                            positions)
  assert x_out.shape == x.shape and isinstance(stats, RouterStats) and cache is None


@pytest.mark.parametrize("attn_types", [(0, 0, 1) * 2, (0, 1, 0)], ids=["scanned", "unrolled"])
def test_stack_returns_output_and_the_whole_updated_cache(attn_types):
  cfg = _config(attn_types)
  L = cfg.num_hidden_layers
  x = jnp.zeros((B, T, cfg.hidden_size))
  positions = jnp.zeros((B, T), jnp.int32)
  (x_out, stats), cache = _output_and_cache(HybridStack(cfg), x, positions)
  assert x_out.shape == x.shape and stats.tokens.shape == (L,) and cache is None
  empty = init_cache(cfg, B, S)
  mask, positions, info = empty.step_inputs(T, None)
  (x_out, stats), layers = _output_and_cache(HybridStack(cfg), x, positions, mask,
                                             empty.layers, info)
  assert x_out.shape == x.shape and stats.tokens.shape == (L,)
  assert _shapes(layers) == _shapes(empty.layers)
