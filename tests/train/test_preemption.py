"""Preemption, in real processes: SIGTERM saves and exits 0; kill -9 leaves a usable run."""
import os
import signal
import subprocess
import sys
import time

import pytest

from m1jax.train import train_and_evaluate
from m1jax.train.checkpointing import Checkpointer
from tests.helpers import micro_train_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(tmp_path, checkpoint_every):
  config_file = tmp_path / "micro.py"
  config_file.write_text(
      "from tests.helpers import micro_train_config\n\n"
      "def get_config(arg=None):\n"
      f"  return micro_train_config(num_steps=100000, checkpoint_every={checkpoint_every})\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--config={config_file}",
       f"--workdir={tmp_path / 'run'}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"trainer exited early:\n{proc.stdout.read()}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError("timed out waiting for the trainer")
    time.sleep(0.2)


def _steps(workdir):
  ckpt = Checkpointer(str(workdir), 3)
  steps = ckpt.manager.all_steps()
  ckpt.close()
  return steps


@pytest.mark.slow
def test_sigterm_saves_then_exits_cleanly(tmp_path):
  proc = _start(tmp_path, checkpoint_every=1000)
  metrics = tmp_path / "run" / "metrics.jsonl"
  _wait_for(lambda: metrics.exists() and "train/loss" in metrics.read_text(), proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert "SIGTERM: saved step" in out
  saved = int(out.split("SIGTERM: saved step ")[1].split(";")[0])
  assert _steps(tmp_path / "run") == [saved] and 2 <= saved < 1000


@pytest.mark.slow
def test_kill_9_during_saves_then_resume(tmp_path):
  proc = _start(tmp_path, checkpoint_every=1)  # a save every step: the kill lands mid-save
  ckpt_dir = tmp_path / "run" / "checkpoints"
  _wait_for(lambda: ckpt_dir.exists() and len(os.listdir(ckpt_dir)) >= 3, proc)
  time.sleep(0.3)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  last = max(_steps(tmp_path / "run"))
  summary = train_and_evaluate(micro_train_config(num_steps=last + 2, checkpoint_every=1),
                               str(tmp_path / "run"))
  assert summary["start_step"] == last and summary["step"] == last + 2
