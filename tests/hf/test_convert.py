"""Streaming HF -> Orbax conversion (m1jax/hf/convert.py) and the export back.

Each HF checkpoint here is written by m1jax.save_pretrained from random params (no torch
needed); tests/hf/test_roundtrip.py ties that writer to transformers.
"""
import json
import os
import pickle
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import m1jax
from m1jax.hf import CheckpointError
from m1jax.hf.convert import convert_hf_to_orbax
from m1jax.hf.converted import load_converted, read_manifest
from m1jax.hf.export import export_to_hf
from tests.helpers import random_params, tiny_config

ATTN_TYPES = (0, 0, 0, 1) * 2  # scanned: period 4, two groups
INDEX = "model.safetensors.index.json"


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
  """{"sharded": dir, "single": dir} of one random model (partial rotary, M != H*D)."""
  root = tmp_path_factory.mktemp("hf")
  cfg = tiny_config(ATTN_TYPES, rotary_dim=4, hidden_size=24)
  params = random_params(cfg, 0)
  m1jax.save_pretrained(cfg, params, root / "sharded", dialect="minimax", max_shard_size="20KB")
  m1jax.save_pretrained(cfg, params, root / "single", dialect="minimax_m1")
  return {"sharded": root / "sharded", "single": root / "single"}


@pytest.fixture
def hf_copy(hf_dirs, tmp_path):
  """A private copy of a checkpoint, free to break: hf_copy("single" | "sharded")."""
  return lambda name: shutil.copytree(hf_dirs[name], tmp_path / f"hf-{name}")


def test_converted_params_equal_from_pretrained_and_export_back(hf_dirs, tmp_path):
  out = tmp_path / "converted"
  convert_hf_to_orbax(hf_dirs["sharded"], out, progress=False)
  assert not (tmp_path / "converted.partial").exists()
  manifest = read_manifest(str(out))
  assert manifest["items"]["layer_003.w1"] == {"block_sparse_moe/w1": [[4, 24, 48], "float32"]}
  # One expert per storage chunk: the export reads one expert without the rest.
  from m1jax.hf.converted import ConvertedSource
  source = ConvertedSource(str(out))
  w1 = next(p for p in m1jax.hf.keys.params(source.config) if p.path[-1] == "w1")
  source.get_slice(w1, (0,))
  (array,) = source._open.values()
  assert tuple(array.chunk_layout.read_chunk.shape)[0] == 1
  model, expected = m1jax.from_pretrained(hf_dirs["sharded"])
  config, params = load_converted(str(out))
  assert config == model.config
  _assert_identical(params, expected)
  # Export back: the same tensors, bit for bit, in the source's dialect.
  export_to_hf(str(out), tmp_path / "back", max_shard_size="50KB", progress=False)
  back = json.loads((tmp_path / "back" / "config.json").read_text())
  assert back["model_type"] == "minimax"
  ours, theirs = {}, {}
  for root, into in ((tmp_path / "back", ours), (hf_dirs["sharded"], theirs)):
    for name in os.listdir(root):
      if name.endswith(".safetensors"):
        into.update(load_file(root / name))
  assert set(ours) == set(theirs)
  for key in theirs:
    np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_dtype_override_and_unscanned_load(hf_dirs, tmp_path):
  out = tmp_path / "bf16"
  convert_hf_to_orbax(hf_dirs["single"], out, config_overrides={"param_dtype": "bfloat16"},
                      progress=False)
  config, params = load_converted(str(out))
  assert params["embed_tokens"].dtype == jax.numpy.bfloat16
  assert params["model"]["groups"]["layer_0"]["block_sparse_moe"]["router"].dtype == np.float32
  # A loader may pick another layout and param_dtype; the architecture must match.
  config2, unrolled = load_converted(str(out), config.replace(scan_layers=False,
                                                               param_dtype="float32"))
  w1 = unrolled["model"]["layers"]["layer_5"]["block_sparse_moe"]["w1"]
  np.testing.assert_array_equal(
      np.asarray(w1), np.asarray(params["model"]["groups"]["layer_1"]["block_sparse_moe"]["w1"][1],
                                 np.float32))
  with pytest.raises(ValueError, match=r"different architecture \(rotary_dim: checkpoint 4, "
                     r"config 8\)"):
    load_converted(str(out), config.replace(rotary_dim=8))


class _Interrupt(Exception):
  pass


def test_an_interrupted_conversion_resumes(hf_dirs, tmp_path):
  out = tmp_path / "converted"
  done = []

  def stop_after_five(name):
    done.append(name)
    if len(done) == 5:
      raise _Interrupt

  with pytest.raises(_Interrupt):
    convert_hf_to_orbax(hf_dirs["sharded"], out, progress=False, after_item=stop_after_five)
  assert not out.exists()  # nothing that looks complete
  partial = tmp_path / "converted.partial"
  with pytest.raises(FileNotFoundError, match=r"not a converted checkpoint.*unfinished"):
    load_converted(str(out))
  # Debris of a save that was killed mid-write, and an item committed without its record.
  items = partial / "items"
  (items / "layer_001.orbax-checkpoint-tmp-123").mkdir()
  (items / "layer_001.orbax-checkpoint-tmp-123" / "junk").write_text("x")
  os.remove(items / f"{done[-1]}.done.json")

  redone = []
  convert_hf_to_orbax(hf_dirs["sharded"], out, progress=False, after_item=redone.append)
  assert done[-1] in redone and not set(done[:-1]) & set(redone)
  assert len(done) - 1 + len(redone) == len(read_manifest(str(out))["items"])
  _, params = load_converted(str(out))
  _assert_identical(params, m1jax.from_pretrained(hf_dirs["sharded"])[1])


def test_resume_refuses_a_changed_source(hf_copy, tmp_path):
  source = hf_copy("single")
  out = tmp_path / "converted"

  def interrupt(name):
    raise _Interrupt

  with pytest.raises(_Interrupt):
    convert_hf_to_orbax(source, out, progress=False, after_item=interrupt)
  tensors = load_file(source / "model.safetensors")
  save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})  # new mtime
  with pytest.raises(FileExistsError, match=r"unfinished conversion of another source"):
    convert_hf_to_orbax(source, out, progress=False)
  convert_hf_to_orbax(source, out, progress=False, overwrite=True)
  assert read_manifest(str(out))


# ------------------------------------------------------------------ bad input
def _rewrite(path, change):
  """Applies change(tensors) to model.safetensors of `path`."""
  tensors = load_file(path / "model.safetensors")
  change(tensors)
  save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _pickle_bomb(marker) -> bytes:
  class CreatesMarker:
    def __reduce__(self):
      return (open, (str(marker), "w"))
  return pickle.dumps({"model.embed_tokens.weight": CreatesMarker()})


ROUTER = "model.layers.2.block_sparse_moe.gate.weight"
EXPERT = "model.layers.5.block_sparse_moe.experts.3.w2.weight"


def _break(kind, hf_copy, tmp_path):
  """A broken checkpoint directory and the regex its error must match."""
  if kind == "missing-tensor":
    path = hf_copy("single")
    _rewrite(path, lambda t: t.pop(EXPERT))
    return path, rf"missing 1 tensors: '{EXPERT}' \(24, 48\)"
  if kind == "extra-tensor":
    path = hf_copy("single")
    key = "model.layers.3.self_attn.qkv_proj.weight"  # layer 3 is softmax
    _rewrite(path, lambda t: t.__setitem__(key, np.zeros((96, 24), np.float32)))
    return path, (rf"1 unexpected tensors: '{key}' \(F32 \(96, 24\), in "
                  r"model.safetensors\)")
  if kind == "wrong-shape":
    path = hf_copy("single")
    _rewrite(path, lambda t: t.__setitem__(EXPERT, np.zeros((48, 24), np.float32)))
    return path, (rf"'{EXPERT}' in model.safetensors: expected shape \(24, 48\), found "
                  r"\(48, 24\)")
  if kind == "unconvertible-dtype":
    path = hf_copy("single")
    _rewrite(path, lambda t: t.__setitem__(ROUTER, np.zeros((4, 24), np.int32)))
    return path, rf"cannot be converted.*'{ROUTER}' \(4, 24\) in model.safetensors has dtype I32"
  if kind == "truncated-file":
    path = hf_copy("sharded")
    shard = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))[3]
    size = os.path.getsize(path / shard)
    with open(path / shard, "r+b") as f:
      f.truncate(size - 10)
    return path, rf"{shard}: cannot read the safetensors header.*truncated"
  if kind == "index-names-missing-shard":
    path = hf_copy("sharded")
    index = json.loads((path / INDEX).read_text())
    shard = index["weight_map"][EXPERT]
    os.remove(path / shard)
    return path, rf"lists shards that do not exist: \['{shard}'\]"
  if kind == "unknown-dialect":
    path = hf_copy("single")
    config = json.loads((path / "config.json").read_text())
    config["model_type"] = "mixtral"
    (path / "config.json").write_text(json.dumps(config))
    return path, r"unknown model_type 'mixtral'"
  if kind == "pickle-only":
    path = hf_copy("single")
    os.remove(path / "model.safetensors")
    (path / "pytorch_model.bin").write_bytes(_pickle_bomb(tmp_path / "marker"))
    return path, r"only pickle weights \['pytorch_model.bin'\].*never unpickles"
  raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing-tensor", "extra-tensor", "wrong-shape",
                                  "unconvertible-dtype", "truncated-file",
                                  "index-names-missing-shard", "unknown-dialect",
                                  "pickle-only"])
def test_bad_input_fails_before_writing(kind, hf_copy, tmp_path):
  path, message = _break(kind, hf_copy, tmp_path)
  out = tmp_path / "converted"
  with pytest.raises((CheckpointError, ValueError), match=message):
    convert_hf_to_orbax(path, out, progress=False)
  assert not out.exists() and not (tmp_path / "converted.partial").exists()
  assert not (tmp_path / "marker").exists()  # the pickle never ran


def test_non_empty_output_needs_overwrite(hf_dirs, tmp_path):
  out = tmp_path / "converted"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"exists and is not empty.*--overwrite"):
    convert_hf_to_orbax(hf_dirs["single"], out, progress=False)
  assert os.listdir(out) == ["notes.txt"]
  assert not (tmp_path / "converted.partial").exists()
  convert_hf_to_orbax(hf_dirs["single"], out, progress=False, overwrite=True)
  assert "notes.txt" not in os.listdir(out) and read_manifest(str(out))


def test_sharded_write_and_load_on_a_mesh(tmp_path):
  """With a mesh, each param is written from its NamedSharding and loads back into it."""
  from m1jax.hf.mesh import model_shardings, param_sharding_fn
  from m1jax.sharding import make_mesh
  cfg = tiny_config(ATTN_TYPES, vocab_size=96)  # vocab divisible by the tensor axis
  params = random_params(cfg, 1)
  m1jax.save_pretrained(cfg, params, tmp_path / "hf")
  mesh = make_mesh("fsdp=2,expert=2,tensor=2")
  convert_hf_to_orbax(tmp_path / "hf", tmp_path / "out", progress=False,
                      shardings=param_sharding_fn(cfg, mesh))
  shardings = model_shardings(cfg, mesh)
  _, loaded = load_converted(str(tmp_path / "out"), shardings=shardings)
  _assert_identical(loaded, params)
  for leaf, sharding in zip(jax.tree.leaves(loaded), jax.tree.leaves(shardings)):
    assert leaf.sharding == sharding
  w1 = loaded["model"]["groups"]["layer_0"]["block_sparse_moe"]["w1"]
  # Really sharded: the scanned axis whole, the experts over `expert` (m1jax/sharding.py).
  assert tuple(w1.sharding.spec)[:2] == (None, "expert")


@pytest.mark.slow
def test_a_killed_conversion_resumes(tmp_path):
  """kill -9 of experiments.convert_hf mid-way, then the same command again: it resumes,
  and the result equals from_pretrained's params."""
  import signal
  import subprocess
  import sys
  import time
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cfg = tiny_config((0, 0, 0, 1) * 4, hidden_size=64, intermediate_size=256,
                    num_local_experts=8)
  m1jax.save_pretrained(cfg, random_params(cfg, 5), tmp_path / "hf")
  out = tmp_path / "converted"
  command = [sys.executable, "-m", "experiments.convert_hf", f"--hf_dir={tmp_path / 'hf'}",
             f"--workdir={out}"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": root}
  proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  items = tmp_path / "converted.partial" / "items"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if items.is_dir() and sum(n.endswith(".done.json") for n in os.listdir(items)) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "finished before it could be killed; make the model bigger"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not out.exists()
  before = {n for n in os.listdir(items) if n.endswith(".done.json")}
  result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Resuming" in result.stdout
  assert len(before) < len(read_manifest(str(out))["items"])
  _, params = load_converted(str(out))
  _assert_identical(params, m1jax.from_pretrained(tmp_path / "hf")[1])
