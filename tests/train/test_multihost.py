"""Two processes x 4 CPU devices (jax.distributed, gloo collectives) train the tiny model
with the losses of one process on 8 devices and the same mesh."""
import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = """from tests.helpers import micro_train_config

def get_config(arg=None):
  config = micro_train_config(num_steps=3, checkpoint_every=3, log_every=1)
  config.mesh = "fsdp=4,tensor=2"
  # Two document slices whatever the process count, so both runs see the same batches.
  config.data.slices = 2
  return config
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _train(config_file, workdir, devices, extra=()):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.train", f"--config={config_file}",
       f"--workdir={workdir}", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  config_file = tmp_path / "multihost.py"
  config_file.write_text(CONFIG)
  port = _free_port()
  hosts = [_train(config_file, tmp_path / "two", 4,
                  (f"--coordinator_address=localhost:{port}", "--num_processes=2",
                   f"--process_id={i}")) for i in range(2)]
  single = _train(config_file, tmp_path / "one", 8)
  for proc in hosts + [single]:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
  two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
  assert len(two) == len(one) == 3
  assert two == pytest.approx(one, rel=1e-6)
  # Each process saved its own data-iterator position.
  data = tmp_path / "two" / "checkpoints" / "3" / "data"
  assert sorted(p.name for p in data.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
