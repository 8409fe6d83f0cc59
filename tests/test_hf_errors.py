"""m1jax.from_pretrained on broken checkpoints (each error names what is wrong) and on the
other layouts a valid checkpoint can take: sharded, and transformers 5's fused experts.

Every case starts from one random transformers.MiniMaxForCausalLM saved with
save_pretrained, copies it and breaks exactly one thing.
"""
import json
import os
import pickle
import re
import shutil

import jax
import numpy as np
import pytest

from tests.helpers import FULL, LINEAR, hf_model, require

require("torch")
require("transformers")
safetensors_numpy = require("safetensors.numpy")

import m1jax  # noqa: E402
from m1jax.hf import CheckpointError  # noqa: E402

NUM_EXPERTS, HIDDEN, FFN = 4, 32, 48
LINEAR_LAYER, SOFTMAX_LAYER = 0, 1


def _hf_model():
  model = hf_model((LINEAR, FULL, LINEAR), num_local_experts=NUM_EXPERTS, hidden_size=HIDDEN,
                   intermediate_size=FFN)
  # The cases below name layers by these indices.
  assert model.config.layer_types[LINEAR_LAYER] == LINEAR
  assert model.config.layer_types[SOFTMAX_LAYER] == FULL
  return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """{"single": dir, "sharded": dir} written once for the module."""
  model = _hf_model()
  root = tmp_path_factory.mktemp("hf")
  model.save_pretrained(root / "single")
  model.save_pretrained(root / "sharded", max_shard_size="20KB")
  return {"single": root / "single", "sharded": root / "sharded"}


@pytest.fixture
def checkpoint(saved, tmp_path):
  """A private copy of the single-file checkpoint, free to break."""
  return shutil.copytree(saved["single"], tmp_path / "ckpt")


def _tensors(path):
  return safetensors_numpy.load_file(os.path.join(path, "model.safetensors"))


def _write_tensors(path, tensors):
  safetensors_numpy.save_file(tensors, os.path.join(path, "model.safetensors"),
                              metadata={"format": "pt"})


def _assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_valid_checkpoint_loads(checkpoint):
  model, params = m1jax.from_pretrained(checkpoint)
  assert model.config.attn_type_list == (0, 1, 0)
  assert params["model"]["layers"]["layer_1"]["block_sparse_moe"]["w1"].shape == (
      NUM_EXPERTS, HIDDEN, FFN)


# ------------------------------------------------------------------ config errors
def test_directory_without_config_json(checkpoint):
  os.remove(checkpoint / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    m1jax.from_pretrained(checkpoint)


def test_path_that_is_not_a_directory(checkpoint):
  with pytest.raises(FileNotFoundError, match="not a directory"):
    m1jax.from_pretrained(checkpoint / "model.safetensors")


def test_unknown_model_type(checkpoint):
  config = json.loads((checkpoint / "config.json").read_text())
  config["model_type"] = "mixtral"
  (checkpoint / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"model_type.*'mixtral'"):
    m1jax.from_pretrained(checkpoint)


# ------------------------------------------------------------------ tensor errors
@pytest.mark.parametrize("key", [
    pytest.param("model.layers.2.block_sparse_moe.experts.3.w3.weight", id="expert-w3"),
    pytest.param(f"model.layers.{SOFTMAX_LAYER}.self_attn.k_proj.weight", id="softmax-k"),
    pytest.param(f"model.layers.{LINEAR_LAYER}.self_attn.norm.weight", id="lightning-norm"),
    pytest.param("model.layers.0.block_sparse_moe.gate.weight", id="router"),
    pytest.param("lm_head.weight", id="lm-head"),
])
def test_missing_tensor_is_named(checkpoint, key):
  tensors = _tensors(checkpoint)
  del tensors[key]
  _write_tensors(checkpoint, tensors)
  with pytest.raises(CheckpointError, match=r"missing 1 tensors: " + re.escape(repr(key))):
    m1jax.from_pretrained(checkpoint)


@pytest.mark.parametrize("key, shape", [
    pytest.param("model.layers.0.block_sparse_moe.experts.4.w1.weight", (FFN, HIDDEN),
                 id="expert-beyond-E"),
    pytest.param(f"model.layers.{SOFTMAX_LAYER}.self_attn.qkv_proj.weight", (96, HIDDEN),
                 id="lightning-weight-in-softmax-layer"),
    pytest.param("model.layers.3.input_layernorm.weight", (HIDDEN,), id="layer-beyond-L"),
])
def test_extra_tensor_is_named(checkpoint, key, shape):
  tensors = _tensors(checkpoint)
  tensors[key] = np.zeros(shape, np.float32)
  _write_tensors(checkpoint, tensors)
  with pytest.raises(CheckpointError, match=r"1 unexpected tensors: " + re.escape(repr(key))):
    m1jax.from_pretrained(checkpoint)


@pytest.mark.parametrize("key, expected, found", [
    pytest.param(f"model.layers.{SOFTMAX_LAYER}.self_attn.k_proj.weight", (16, HIDDEN),
                 (24, HIDDEN), id="softmax-k"),
    pytest.param("model.layers.2.block_sparse_moe.experts.1.w2.weight", (HIDDEN, FFN),
                 (FFN, HIDDEN), id="expert-w2-transposed"),
    pytest.param("model.embed_tokens.weight", (97, HIDDEN), (96, HIDDEN), id="embed"),
])
def test_wrong_shape_names_key_expected_and_found(checkpoint, key, expected, found):
  tensors = _tensors(checkpoint)
  assert tensors[key].shape == expected
  tensors[key] = np.zeros(found, np.float32)
  _write_tensors(checkpoint, tensors)
  with pytest.raises(CheckpointError) as error:
    m1jax.from_pretrained(checkpoint)
  message = str(error.value)
  assert repr(key) in message
  assert f"expected shape {expected}" in message
  assert f"found {found}" in message


def test_index_listing_a_missing_shard(saved, tmp_path):
  checkpoint = shutil.copytree(saved["sharded"], tmp_path / "ckpt")
  index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[-1]
  os.remove(checkpoint / shard)
  with pytest.raises(CheckpointError, match=re.escape(shard)):
    m1jax.from_pretrained(checkpoint)


# ------------------------------------------------------------------ pickle
class _CreatesMarker:
  """Unpickling this creates a file: the observable side effect of running a pickle."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def _pickle_bomb(marker) -> bytes:
  return pickle.dumps({"model.embed_tokens.weight": _CreatesMarker(marker)})


def test_pickle_bomb_is_live(tmp_path):
  # The payload really acts when unpickled, so the tests below would see a marker if the
  # loader ever unpickled it.
  marker = tmp_path / "probe-marker"
  pickle.loads(_pickle_bomb(marker)).popitem()[1].close()
  assert marker.exists()


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt"])
def test_pickle_only_checkpoint_is_refused_without_unpickling(checkpoint, tmp_path, name):
  marker = tmp_path / "marker"
  os.remove(checkpoint / "model.safetensors")
  (checkpoint / name).write_bytes(_pickle_bomb(marker))
  with pytest.raises(CheckpointError, match=r"(?s)pickle.*" + re.escape(name)):
    m1jax.from_pretrained(checkpoint)
  assert not marker.exists()


def test_pickle_next_to_safetensors_is_ignored(checkpoint, tmp_path, saved):
  marker = tmp_path / "marker"
  (checkpoint / "pytorch_model.bin").write_bytes(_pickle_bomb(marker))
  _, params = m1jax.from_pretrained(checkpoint)
  _, reference = m1jax.from_pretrained(saved["single"])
  _assert_same_params(params, reference)
  assert not marker.exists()


# ------------------------------------------------------------------ other valid layouts
def test_sharded_checkpoint_loads_to_the_same_params(saved):
  sharded = saved["sharded"]
  index = json.loads((sharded / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  assert not (sharded / "model.safetensors").exists()
  _, params = m1jax.from_pretrained(sharded)
  _, reference = m1jax.from_pretrained(saved["single"])
  _assert_same_params(params, reference)


def _fuse_experts(tensors):
  """Per-expert w1/w3/w2 -> transformers 5's mlp.experts.gate_up_proj / down_proj."""
  fused = {}
  for key, value in tensors.items():
    if ".block_sparse_moe." not in key:
      fused[key] = value
  for layer in range(3):
    moe = f"model.layers.{layer}.block_sparse_moe"
    w1 = np.stack([tensors[f"{moe}.experts.{e}.w1.weight"] for e in range(NUM_EXPERTS)])
    w3 = np.stack([tensors[f"{moe}.experts.{e}.w3.weight"] for e in range(NUM_EXPERTS)])
    w2 = np.stack([tensors[f"{moe}.experts.{e}.w2.weight"] for e in range(NUM_EXPERTS)])
    mlp = f"model.layers.{layer}.mlp"
    fused[f"{mlp}.experts.gate_up_proj"] = np.concatenate([w1, w3], axis=1)  # [E, 2F, M]
    fused[f"{mlp}.experts.down_proj"] = w2                                    # [E, M, F]
    fused[f"{mlp}.gate.weight"] = tensors[f"{moe}.gate.weight"]
  return fused


def test_fused_transformers5_expert_layout_loads_to_identical_params(checkpoint, saved):
  fused = _fuse_experts(_tensors(checkpoint))
  assert fused["model.layers.0.mlp.experts.gate_up_proj"].shape == (NUM_EXPERTS, 2 * FFN,
                                                                     HIDDEN)
  assert fused["model.layers.0.mlp.experts.down_proj"].shape == (NUM_EXPERTS, HIDDEN, FFN)
  assert not any("block_sparse_moe" in k for k in fused)
  os.remove(checkpoint / "model.safetensors")
  _write_tensors(checkpoint, fused)
  _, params = m1jax.from_pretrained(checkpoint)
  _, reference = m1jax.from_pretrained(saved["single"])
  _assert_same_params(params, reference)
  # w1 and w3 are different tensors, so a swapped gate/up split could not pass.
  moe = reference["model"]["layers"]["layer_0"]["block_sparse_moe"]
  assert not np.array_equal(np.asarray(moe["w1"]), np.asarray(moe["w3"]))


def test_fused_layout_wrong_shape_is_named(checkpoint):
  fused = _fuse_experts(_tensors(checkpoint))
  key = "model.layers.2.mlp.experts.down_proj"
  fused[key] = np.ascontiguousarray(fused[key].transpose(0, 2, 1))
  os.remove(checkpoint / "model.safetensors")
  _write_tensors(checkpoint, fused)
  with pytest.raises(CheckpointError, match=re.escape(repr(key)) + r".*expected shape "
                     + re.escape(str((NUM_EXPERTS, HIDDEN, FFN)))):
    m1jax.from_pretrained(checkpoint)
