"""HF -> m1jax -> HF: save_pretrained in both dialects.

transformers loads the in-tree export and computes m1jax's logits; m1jax loads either export
back to bit-identical params (partial rotary included, which transformers cannot run:
it rotates the whole head_dim, docs/MODEL.md §9).
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

import m1jax
from m1jax.hf import CheckpointError
from tests.helpers import FULL, LINEAR, hf_model, random_ids, random_params, require, tiny_config


_BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")


def _load_all(path):
  """{key: array} of every safetensors file in a checkpoint directory."""
  out = {}
  for name in sorted(os.listdir(path)):
    if name.endswith(".safetensors"):
      out.update(load_file(os.path.join(path, name)))
  return out


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_transformers_round_trip(tmp_path):
  """transformers -> m1jax -> save_pretrained("minimax") -> transformers: the same tensors,
  and transformers' logits on the export equal m1jax's; also via a minimax_m1 (remote
  dialect) checkpoint, which transformers itself cannot read."""
  torch = require("torch")
  transformers = require("transformers")
  source = hf_model((LINEAR, LINEAR, LINEAR, FULL) * 2)  # scanned: period 4, two groups
  source.save_pretrained(tmp_path / "hf")
  model, params = m1jax.from_pretrained(tmp_path / "hf")
  assert model.config.is_scanned
  m1jax.save_pretrained(model.config, params, tmp_path / "export", dialect="minimax",
                        max_shard_size="40KB")
  index = json.loads((tmp_path / "export" / "model.safetensors.index.json").read_text())
  assert len(set(index["weight_map"].values())) > 1
  # Every tensor written equals the one transformers saved (same names, bits, dtypes).
  ours, theirs = _load_all(tmp_path / "export"), _load_all(tmp_path / "hf")
  # transformers also saves the lightning decay buffers, which m1jax recomputes.
  theirs = {k: v for k, v in theirs.items() if not k.endswith(_BUFFERS)}
  assert set(ours) == set(theirs)
  for key in theirs:
    assert ours[key].dtype == theirs[key].dtype, key
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in ours.values())

  ids = np.asarray(random_ids(0, 2, 21))
  logits = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(ids)).logits)
  # The same weights through the remote dialect first: minimax_m1 -> m1jax -> minimax.
  m1jax.save_pretrained(model.config, params, tmp_path / "remote", dialect="minimax_m1")
  remote_model, remote_params = m1jax.from_pretrained(tmp_path / "remote")
  m1jax.save_pretrained(remote_model.config, remote_params, tmp_path / "via-remote",
                        dialect="minimax")
  for export in ("export", "via-remote"):
    reloaded = transformers.MiniMaxForCausalLM.from_pretrained(tmp_path / export).eval()
    with torch.no_grad():
      ref = reloaded(torch.tensor(ids)).logits.float().numpy()
    assert np.max(np.abs(logits - ref)) <= 1e-4 * np.max(np.abs(ref)), export


@pytest.mark.parametrize("dialect", ["minimax_m1", "minimax"])
@pytest.mark.parametrize("attn_types, dtype", [
    pytest.param((0, 0, 0, 1) * 2, "float32", id="scanned-f32"),
    pytest.param((1, 0, 0), "bfloat16", id="unrolled-bf16"),
])
def test_m1jax_round_trip_is_bit_identical(tmp_path, dialect, attn_types, dtype):
  # Partial rotary (4 of 8 dims) and M != H*D, as in the release.
  cfg = tiny_config(attn_types, rotary_dim=4, hidden_size=24, param_dtype=dtype, dtype=dtype)
  params = random_params(cfg, 1)
  m1jax.save_pretrained(cfg, params, tmp_path / "out", dialect=dialect)
  model, back = m1jax.from_pretrained(tmp_path / "out")
  _assert_identical(back, params)
  expected = cfg if dialect == "minimax" else cfg.replace(block_size=256)
  assert model.config == expected
  hf = json.loads((tmp_path / "out" / "config.json").read_text())
  assert hf["model_type"] == dialect
  assert (hf.get("dtype") or hf.get("torch_dtype")) == dtype
  # Routers stay float32 on disk whatever the weights' dtype.
  tensors = load_file(tmp_path / "out" / "model.safetensors")
  assert tensors["model.layers.0.block_sparse_moe.gate.weight"].dtype == np.float32
  assert tensors["model.embed_tokens.weight"].dtype.name == dtype


def test_remote_dialect_checkpoint_round_trips(tmp_path):
  """A remote-dialect (minimax_m1) checkpoint -> m1jax -> minimax_m1 again: same tensors,
  same config.json values."""
  cfg = tiny_config((0, 1, 0), rotary_dim=4)
  m1jax.save_pretrained(cfg, random_params(cfg, 2), tmp_path / "a", dialect="minimax_m1")
  model, params = m1jax.from_pretrained(tmp_path / "a")
  m1jax.save_pretrained(model.config, params, tmp_path / "b", dialect="minimax_m1")
  a, b = _load_all(tmp_path / "a"), _load_all(tmp_path / "b")
  assert set(a) == set(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert (json.loads((tmp_path / "a" / "config.json").read_text()) ==
          json.loads((tmp_path / "b" / "config.json").read_text()))


def test_dtype_casts_and_tokenizer_files_are_copied(tmp_path):
  cfg = tiny_config()
  params = random_params(cfg, 3)
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text('{"version": "1.0"}')
  (tok / "tokenizer_config.json").write_text("{}")
  m1jax.save_pretrained(cfg, params, tmp_path / "out", dialect="minimax", dtype="bfloat16",
                        tokenizer_dir=tok)
  assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"version": "1.0"}'
  assert (tmp_path / "out" / "tokenizer_config.json").exists()
  model, back = m1jax.from_pretrained(tmp_path / "out", param_dtype="float32")
  embed = np.asarray(params["embed_tokens"])
  np.testing.assert_array_equal(np.asarray(back["embed_tokens"]),
                                embed.astype(jnp.bfloat16).astype(np.float32))


def test_refuses_non_empty_output_and_unknown_dialect_before_writing(tmp_path):
  cfg = tiny_config()
  params = random_params(cfg, 4)
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"exists and is not empty.*overwrite"):
    m1jax.save_pretrained(cfg, params, out)
  assert os.listdir(out) == ["keep.txt"]
  with pytest.raises(ValueError, match=r"unknown HF dialect 'llama'"):
    m1jax.save_pretrained(cfg, params, tmp_path / "new", dialect="llama")
  assert not (tmp_path / "new").exists()
  m1jax.save_pretrained(cfg, params, out, overwrite=True)
  assert "keep.txt" not in os.listdir(out)
  assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging directory left behind


def test_a_failed_export_leaves_nothing(tmp_path):
  cfg = tiny_config()
  params = random_params(cfg, 5)
  del params["lm_head"]  # found missing only after every other tensor was written
  with pytest.raises(KeyError, match="lm_head"):
    m1jax.save_pretrained(cfg, params, tmp_path / "out")
  assert os.listdir(tmp_path) == []


def test_export_of_wrong_params_names_the_param(tmp_path):
  cfg = tiny_config()
  params = random_params(cfg, 6)
  params["norm"]["scale"] = jnp.ones(cfg.hidden_size + 1)
  with pytest.raises(ValueError, match=r"norm/scale: expected shape \(32,\), found \(33,\)"):
    m1jax.save_pretrained(cfg, params, tmp_path / "out")


def test_reimport_reports_a_bad_tensor_by_key_and_file(tmp_path):
  cfg = tiny_config()
  m1jax.save_pretrained(cfg, random_params(cfg, 7), tmp_path / "out", max_shard_size="30KB")
  index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
  key = "model.layers.1.self_attn.o_proj.weight"
  shard = index["weight_map"][key]
  tensors = load_file(tmp_path / "out" / shard)
  tensors[key] = tensors[key][:, :-1].copy()
  from safetensors.numpy import save_file
  save_file(tensors, tmp_path / "out" / shard, metadata={"format": "pt"})
  with pytest.raises(CheckpointError, match=rf"'{key}' in {shard}: expected shape \(32, 32\), "
                     r"found \(32, 31\)"):
    m1jax.from_pretrained(tmp_path / "out")


def test_big_transposes_go_in_row_blocks(tmp_path, monkeypatch):
  """With tiny blocks every transposed tensor is read and written in many row blocks; the
  round trip is still exact (the heads' [V, M] <-> [M, V] transposes at 456B scale)."""
  from m1jax.hf import exporting, importing
  monkeypatch.setattr(exporting, "BLOCK_BYTES", 200)
  monkeypatch.setattr(importing, "BLOCK_BYTES", 200)
  cfg = tiny_config((0, 1, 0), hidden_size=24)
  params = random_params(cfg, 8)
  m1jax.save_pretrained(cfg, params, tmp_path / "out", dialect="minimax")
  _, back = m1jax.from_pretrained(tmp_path / "out")
  _assert_identical(back, params)
  tensors = load_file(tmp_path / "out" / "model.safetensors")
  np.testing.assert_array_equal(tensors["lm_head.weight"], np.asarray(params["lm_head"]).T)
