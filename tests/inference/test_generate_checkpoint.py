"""Sampling from a trainer checkpoint: restore_trained_params and experiments/generate.py."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from m1jax import ModelConfig, init_params
from m1jax.train import train_and_evaluate
from m1jax.train.checkpointing import restore_trained_params
from tests.helpers import micro_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_generate_from_a_trainer_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  config = micro_train_config(num_steps=3, checkpoint_every=3)
  train_and_evaluate(config, str(workdir))
  saved_config, model, params = restore_trained_params(str(workdir))
  assert model.config == ModelConfig.from_dict(config.model.to_dict())
  assert saved_config.train.num_steps == 3
  # The params are the trained ones: same structure as a fresh init, different values.
  fresh = init_params(model, jax.random.key(config.train.seed))
  assert jax.tree.structure(fresh) == jax.tree.structure(params)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(fresh),
                                                      jax.tree.leaves(params)))
  with pytest.raises(FileNotFoundError, match="step 99"):
    restore_trained_params(str(workdir), step=99)
  with pytest.raises(FileNotFoundError, match="no trainer checkpoints"):
    restore_trained_params(str(tmp_path / "nothing"))

  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  run = subprocess.run([sys.executable, "-m", "experiments.generate",
                        f"--checkpoint_dir={workdir}", "--prompt=12+34=", "--max_new_tokens=4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.startswith("12+34=")
