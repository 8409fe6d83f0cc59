"""Sequence parallelism in the model: a tiny lightning + softmax model's loss and all
gradients on meshes with `sequence` > 1 (LASP-2 lightning, K/V all-gather softmax) equal one
device's, on packed rows whose documents start on and next to shard edges."""
import jax
import numpy as np
import pytest

from m1jax import MiniMaxM1ForCausalLM, sharding
from m1jax.layers import lightning_attention as lightning_layer
from m1jax.ops import attention_impl
from m1jax.train.loop import global_batch
from tests.helpers import random_params, tiny_config
from tests.train.test_sharded_train import MICRO, _loss_and_grads

# Document lengths per row of 16 tokens (shard edges at 4, 8, 12): starts at a shard's first
# token, at its last (7, 11), a one-token document, a row that is one document.
DOCS = ([8, 8], [3, 1, 12], [7, 9], [16], [4, 4, 4, 4], [5, 6, 5], [11, 5], [1, 15])


def _packed_batch(seed=0):
  rng = np.random.default_rng(seed)
  length = sum(DOCS[0])
  tokens = rng.integers(0, MICRO["vocab_size"], (len(DOCS), length)).astype(np.int32)
  segments = np.concatenate([np.repeat(np.arange(1, len(d) + 1), d)[None] for d in DOCS])
  positions = np.concatenate([np.concatenate([np.arange(n) for n in d])[None] for d in DOCS])
  return {"tokens": tokens, "positions": positions.astype(np.int32),
          "segment_ids": segments.astype(np.int32), "loss_mask": np.ones_like(tokens)}


@pytest.fixture(scope="module")
def one_device():
  model = MiniMaxM1ForCausalLM(tiny_config((0, 1), **MICRO))
  params = random_params(model.config, seed=0)
  one = sharding.make_mesh("fsdp=1", jax.devices()[:1])
  batch = global_batch(_packed_batch(), one)
  return model, params, _loss_and_grads(model, params, batch, one)


def _spy(monkeypatch, module, name, calls):
  real = getattr(module, name)
  monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or real(*a, **k))


@pytest.mark.parametrize("spec", ["fsdp=4,sequence=2", "tensor=2,sequence=4"])
def test_sequence_parallel_loss_and_grads_equal_one_device(one_device, spec, monkeypatch):
  model, params, (ref_loss, ref_grads) = one_device
  # Both sequence-parallel paths must be the ones traced (LASP-2, the K/V all-gather).
  calls = []
  _spy(monkeypatch, lightning_layer, "lightning_attention_sp", calls)
  _spy(monkeypatch, attention_impl, "attend_sp", calls)
  mesh = sharding.make_mesh(spec)
  placed = jax.device_put(params, sharding.logical_shardings(
      params, sharding.logical_param_axes(_boxed(model)), mesh))
  loss, grads = _loss_and_grads(model, placed, global_batch(_packed_batch(), mesh), mesh)
  assert sorted(set(calls)) == ["attend_sp", "lightning_attention_sp"], calls
  assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree.leaves(ref_grads)):
    err = np.linalg.norm(np.asarray(g) - np.asarray(r)) / max(np.linalg.norm(r), 1e-30)
    assert err <= 1e-5, (spec, jax.tree_util.keystr(path), err)


def _boxed(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32)))[
      "params"]


def test_length_not_divisible_by_sequence_names_both():
  model = MiniMaxM1ForCausalLM(tiny_config((0, 1), **MICRO))
  params = random_params(model.config, seed=0)
  tokens = np.zeros((2, 6), np.int32)
  with sharding.use_mesh(sharding.make_mesh("fsdp=2,sequence=4")):
    with pytest.raises(ValueError, match=r"sequence length T=6 .* not divisible by mesh axes "
                                         r"sequence = 4"):
      jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
