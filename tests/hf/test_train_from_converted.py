"""convert_hf -> train.init_from -> the trainer's first loss equals from_pretrained's (the
same run started from the HF directory); then export the trained run (a trainer workdir)
back to HF, params only, slice by slice."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import m1jax
from m1jax.config import ModelConfig
from m1jax.hf.convert import convert_hf_to_orbax
from m1jax.hf.export import export_to_hf
from m1jax.train import train_and_evaluate
from m1jax.train.checkpointing import restore_trained_params
from tests.helpers import micro_train_config, random_params

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**train):
  config = micro_train_config(**train)
  # Four layers of period 2: a scanned stack, so the export reads [g] slices.
  config.model.num_hidden_layers = 4
  config.model.attn_type_list = (0, 1, 0, 1)
  return config


def _first_loss(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return next(json.loads(line)["train/loss"] for line in f if "train/loss" in line)


def _assert_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(HF dir, converted dir) of random weights with the trainer micro config's architecture."""
  root = tmp_path_factory.mktemp("converted")
  cfg = ModelConfig.from_dict(_config().model.to_dict())
  m1jax.save_pretrained(cfg, random_params(cfg, 3), root / "hf", dialect="minimax")
  convert_hf_to_orbax(root / "hf", root / "converted", progress=False)
  return root / "hf", root / "converted"


def test_init_from_loads_what_from_pretrained_loads(converted):
  """The params train.init_from hands the trainer, from the converted checkpoint and from
  the HF directory itself, are from_pretrained's, bit for bit."""
  from m1jax.train.init_from import load_init_params
  hf_dir, converted_dir = converted
  cfg = ModelConfig.from_dict(_config().model.to_dict())
  _, expected = m1jax.from_pretrained(hf_dir)
  _assert_identical(load_init_params(str(converted_dir), cfg), expected)
  _assert_identical(load_init_params(str(hf_dir), cfg), expected)
  with pytest.raises(FileNotFoundError, match="neither a converted checkpoint"):
    load_init_params(str(hf_dir / "nowhere"), cfg)


def test_export_reads_a_trainer_checkpoint_one_slice_at_a_time(tmp_path):
  """A checkpoint in the trainer's layout (Orbax `state` item with params and optimizer
  moments, `config` item) exports its params bit for bit; the moments are never read."""
  import orbax.checkpoint as ocp
  from m1jax.train import checkpointing
  config = _config()
  cfg = ModelConfig.from_dict(config.model.to_dict())
  params = jax.tree.map(np.asarray, random_params(cfg, 6))
  assert cfg.is_scanned
  state = {"step": np.int32(7), "params": params,
           "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
  manager = ocp.CheckpointManager(tmp_path / "run" / "checkpoints")
  manager.save(7, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state, save_args=checkpointing._save_args(state)),
      config=ocp.args.JsonSave(config.to_dict())))
  manager.wait_until_finished()
  manager.close()
  export_to_hf(str(tmp_path / "run"), tmp_path / "exported", dialect="minimax",
               dtype="float32", progress=False)
  _, exported = m1jax.from_pretrained(tmp_path / "exported")
  _assert_identical(exported, params)
  # Stored one expert of one layer per chunk, so each read decodes only its own slice.
  from m1jax.hf.trainer_source import TrainerCheckpointSource
  w1 = TrainerCheckpointSource(str(tmp_path / "run"))._open(
      ("model", "groups", "layer_0", "block_sparse_moe", "w1"))
  assert tuple(w1.chunk_layout.read_chunk.shape)[:2] == (1, 1)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 3; have \[7\]"):
    export_to_hf(str(tmp_path / "run"), tmp_path / "other", step=3, progress=False)


@pytest.mark.slow
def test_training_starts_from_converted_weights_and_exports_back(converted, tmp_path):
  hf_dir, converted_dir = converted
  # Two steps: the first has learning rate 0 (warmup), the second changes the params.
  config = _config(num_steps=2, log_every=1, checkpoint_every=2)
  config.train.init_from = str(converted_dir)
  workdir = tmp_path / "run"
  train_and_evaluate(config, str(workdir))
  # The reference: the same run started from the HF directory itself, whose params
  # init_from reads with m1jax.from_pretrained. Same trainer, same batches: the same loss.
  reference = _config(num_steps=1, log_every=1, checkpoint_every=1)
  reference.train.init_from = str(hf_dir)
  train_and_evaluate(reference, str(tmp_path / "reference"))
  assert _first_loss(workdir) == _first_loss(tmp_path / "reference")

  # Export the trained run: params only, bit-identical to what the trainer restores.
  export_to_hf(str(workdir), tmp_path / "exported", dialect="minimax", progress=False)
  _, trained = restore_trained_params(str(workdir))[1:]
  _, exported = m1jax.from_pretrained(tmp_path / "exported")
  _assert_identical(exported, trained)
  _, initial = m1jax.from_pretrained(hf_dir)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained),
                                                      jax.tree.leaves(initial)))


@pytest.mark.slow
def test_a_workdir_checkpoint_wins_over_init_from(converted, tmp_path):
  _, converted_dir = converted
  config = _config(num_steps=2, log_every=1, checkpoint_every=1)
  workdir = tmp_path / "run"
  train_and_evaluate(config, str(workdir))  # random init, two steps
  config.train.num_steps = 3
  config.train.init_from = str(converted_dir)
  summary = train_and_evaluate(config, str(workdir))
  assert summary["start_step"] == 2  # resumed its own checkpoint, not the converted weights


def test_init_from_refuses_another_architecture(converted, tmp_path):
  _, converted_dir = converted
  config = _config(num_steps=1)
  config.model.rotary_dim = 2
  config.train.init_from = str(converted_dir)
  with pytest.raises(ValueError, match=r"different architecture \(rotary_dim: checkpoint 4, "
                     r"config 2\)"):
    train_and_evaluate(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_command_lines_convert_train_sample_export(tmp_path):
  """experiments.convert_hf, .train --config.train.init_from, .generate --checkpoint_dir and
  .export_hf, as a user runs them."""
  from tests.helpers import require
  tokenizers = require("tokenizers")
  from configs import tiny
  variant = "configs/tiny.py:layers=8,runlocal"
  cfg = ModelConfig.from_dict(tiny.get_config(variant.split(":")[1]).model.to_dict())
  hf_dir = tmp_path / "hf"
  m1jax.save_pretrained(cfg, random_params(cfg, 4), hf_dir, dialect="minimax_m1")
  # A character-level tokenizer within the model's vocabulary.
  chars = "0123456789+= abc"
  tok = tokenizers.Tokenizer(tokenizers.models.BPE({c: i for i, c in enumerate(chars)}, []))
  tok.save(str(hf_dir / "tokenizer.json"))
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}

  def run(*args):
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  converted_dir = tmp_path / "converted"
  result = run("experiments.convert_hf", f"--hf_dir={hf_dir}", f"--workdir={converted_dir}")
  assert "tensors" in result.stderr and (converted_dir / "tokenizer.json").exists()
  sample = run("experiments.generate", f"--checkpoint_dir={converted_dir}", "--prompt=12+3=",
               "--max_new_tokens=3")
  assert sample.stdout.startswith("12+3=")
  run("experiments.train", f"--config={variant}", f"--workdir={tmp_path / 'run'}",
      "--config.train.num_steps=2", "--config.train.eval_batches=0",
      "--config.train.eval_examples=0", "--config.train.eval_at_start=False",
      "--config.train.plot=False", "--config.train.tensorboard=False",
      f"--config.train.init_from={converted_dir}")
  run("experiments.export_hf", f"--checkpoint_dir={tmp_path / 'run'}",
      f"--out={tmp_path / 'exported'}", "--dialect=minimax")
  _, exported = m1jax.from_pretrained(tmp_path / "exported")
  _, trained = restore_trained_params(str(tmp_path / "run"))[1:]
  _assert_identical(exported, trained)
  failed = subprocess.run([sys.executable, "-m", "experiments.convert_hf",
                           f"--hf_dir={hf_dir}", f"--workdir={converted_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert failed.returncode != 0 and "exists and is not empty" in failed.stderr
  assert "Traceback" not in failed.stderr
