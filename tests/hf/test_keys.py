"""The HF key table (m1jax/hf/keys.py) against the released checkpoint and the model.

The release's key list is generated from configs/minimax_m1_456b.py's shapes alone (no
tensor is allocated) and checked against the published index: 8,243 tensors, 912,210,767,872
bytes with the 80 routers in float32 (docs/MODEL.md §3.3).
"""
import collections

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import minimax_m1_456b
from m1jax.config import ModelConfig
from m1jax.hf import keys
from m1jax.layers.decoder import split_layer_params
from m1jax.model import MiniMaxM1ForCausalLM
from tests.helpers import random_params, tiny_config

RELEASED_TENSORS = 8243
RELEASED_BYTES = 912_210_767_872


@pytest.fixture(scope="module")
def released():
  return ModelConfig.from_dict(minimax_m1_456b.get_config().model.to_dict())


def test_released_key_list_matches_the_published_index(released):
  tensors = list(keys.hf_tensors(released, dtype="bfloat16"))
  assert len(tensors) == RELEASED_TENSORS
  nbytes = sum(int(np.prod(shape)) * (4 if d == "float32" else 2) for _, shape, d in tensors)
  assert nbytes == RELEASED_BYTES
  assert len({key for key, _, _ in tensors}) == RELEASED_TENSORS
  by_key = {key: (shape, d) for key, shape, d in tensors}
  # Spot checks against the published shapes.
  assert by_key["model.layers.0.self_attn.qkv_proj.weight"] == ((24576, 6144), "bfloat16")
  assert by_key["model.layers.79.self_attn.k_proj.weight"] == ((1024, 6144), "bfloat16")
  assert by_key["model.layers.7.block_sparse_moe.gate.weight"] == ((32, 6144), "float32")
  assert by_key["model.layers.3.block_sparse_moe.experts.31.w2.weight"] == (
      (6144, 9216), "bfloat16")
  assert by_key["lm_head.weight"] == ((200064, 6144), "bfloat16")
  assert "model.layers.7.self_attn.qkv_proj.weight" not in by_key  # a softmax layer


def test_every_released_key_maps_to_one_param_and_back(released):
  seen = {}
  for key, shape, _ in keys.hf_tensors(released):
    found = keys.lookup(released, key)
    assert found is not None, key
    param, expert = found
    # Back: the param (and expert) names exactly this key, with this shape.
    assert param.hf_keys(released)[expert or 0] == key
    assert keys.shape(param.rule.hf_shape, released) == shape
    location = keys.param_location(released, param) + (expert,)
    assert location not in seen, (key, seen.get(location))
    seen[location] = key
  assert len(seen) == RELEASED_TENSORS
  assert keys.lookup(released, "model.layers.80.input_layernorm.weight") is None
  assert keys.lookup(released, "model.layers.0.block_sparse_moe.experts.32.w1.weight") is None
  assert keys.lookup(released, "model.layers.7.self_attn.qkv_proj.weight") is None


def _model_leaves(cfg):
  """{path: shape} of the model's params, from shapes only."""
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: MiniMaxM1ForCausalLM(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))))
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in
          jax.tree_util.tree_flatten_with_path(abstract["params"])[0]}


def _table_leaves(cfg):
  leaves = collections.defaultdict(set)
  for param in keys.params(cfg):
    path, index = keys.param_location(cfg, param)
    leaves[path].add((index, param.shape(cfg)))
  groups = cfg.num_hidden_layers // cfg.layer_period
  out = {}
  for path, entries in leaves.items():
    (shape,) = {s for _, s in entries}
    indices = sorted(i for i, _ in entries)
    if indices == [None]:
      out[path] = shape
    else:
      assert indices == list(range(groups)), path
      out[path] = (groups,) + shape
  return out


@pytest.mark.parametrize("name", ["released", "tiny-scanned", "tiny-unrolled", "tiny-M-ne-HD"])
def test_table_covers_every_model_param_exactly(name, released):
  cfg = {"released": released,
         "tiny-scanned": tiny_config((0, 0, 0, 1) * 2),
         "tiny-unrolled": tiny_config((1, 0, 0, 1, 0)),
         "tiny-M-ne-HD": tiny_config((0, 1) * 2, hidden_size=24)}[name]
  assert _table_leaves(cfg) == _model_leaves(cfg)


@pytest.mark.parametrize("attn_types", [(0, 0, 0, 1) * 2, (1, 0, 0)], ids=["scanned", "unrolled"])
def test_param_location_agrees_with_split_layer_params(attn_types):
  cfg = tiny_config(attn_types)
  params = random_params(cfg, 0)
  per_layer = split_layer_params(params["model"], cfg)
  for param in keys.params(cfg):
    value = np.asarray(keys.get_param(params, cfg, param))
    if param.layer is None:
      expected = params
    else:
      expected = per_layer[param.layer]
    for name in param.path:
      expected = expected[name]
    np.testing.assert_array_equal(value, np.asarray(expected))


def test_transforms_invert_each_other_and_keep_qkv_interleaving():
  cfg = tiny_config((0, 1))
  rng = np.random.default_rng(0)
  for param in keys.params(cfg):
    value = rng.standard_normal(param.shape(cfg)).astype(np.float32)
    tensors = list(keys.from_param(param.rule, value, cfg))
    assert len(tensors) == len(param.hf_keys(cfg))
    assert all(t.shape == keys.shape(param.rule.hf_shape, cfg) for t in tensors)
    np.testing.assert_array_equal(keys.to_param(param.rule, tensors, cfg), value)
  # qkv rows of head h are [h*3D, (h+1)*3D): q, then k, then v (docs/MODEL.md §6.1).
  H, D, M = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
  qkv = np.arange(3 * H * D * M, dtype=np.float32).reshape(3 * H * D, M)
  rule = next(r for r in keys.RULES if r.param == ("self_attn", "qkv_proj"))
  kernel = keys.to_param(rule, [qkv], cfg)
  assert kernel.shape == (M, H, 3 * D)
  np.testing.assert_array_equal(kernel[:, 1, D:2 * D], qkv[3 * D + D:3 * D + 2 * D].T)
