"""Train a MiniMax-M1 model: flags -> m1jax.train.train_and_evaluate(config, workdir).

  python -m experiments.train                      # the demo: tiny model, arithmetic, CPU
  python -m experiments.train --config=configs/small.py --workdir=runs/small
  python -m experiments.train --config=configs/minimax_m1_456b.py:runlocal --workdir=/tmp/m1
  python -m experiments.train --config.train.num_steps=50 --config.optimizer.learning_rate=1e-3

`--config=FILE:VARIANTS` passes VARIANTS to the file's get_config (e.g. `layers=8,runlocal`;
each config's docstring lists its own). Overrides use ml_collections' `--config.key=value`; an
unknown key is an error naming it (m1jax.config_overrides). Rerunning with the same workdir
resumes from its latest checkpoint; SIGTERM saves and exits cleanly.

Meshes and many hosts (m1jax/sharding.py): `--config.mesh="fsdp=4,tensor=2"` lays the
devices out (default: all on fsdp). Every host runs the same command; on Cloud TPU, SLURM or
Open MPI jax.distributed finds the others from the environment, elsewhere name them:

  python -m experiments.train --config=configs/tiny.py:runlocal --workdir=/tmp/mh \
      --coordinator_address=localhost:12355 --num_processes=2 --process_id=0   # and =1
"""
import json
import os

from absl import app
from absl import flags
from absl import logging

from m1jax import config_overrides

_CONFIG = config_overrides.define_config_file(
    "config", "configs/tiny.py",
    "A configs/*.py file (get_config), optionally with variants: configs/tiny.py:runlocal.")
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/tiny", "Checkpoints, metrics.jsonl, tensorboard/ and curves.png go here.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for a multi-process run "
    "(jax.distributed.initialize); not needed where the environment names it (TPU pods).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0..n-1.")

# Environment variables through which a cluster tells jax.distributed about its processes.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_SIZE")


def _initialize_distributed() -> None:
  """jax.distributed.initialize with the flags, or from the environment on a cluster; a
  single process (no flags, no cluster) skips it."""
  given = [f for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID) if f.value is not None]
  multi_host_tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if not given and not multi_host_tpu and not any(v in os.environ for v in _CLUSTER_ENV):
    return
  import jax
  # Cross-process collectives of CPU devices (tests, CPU clusters) need gloo.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if given and len(given) != 3:
    raise app.UsageError("--coordinator_address, --num_processes and --process_id go "
                         "together")
  if given:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO; progress lines come from the trainer itself.
  logging.set_verbosity(logging.WARNING)
  # Import after flag parsing so --help stays fast.
  _initialize_distributed()
  from m1jax.train import train_and_evaluate
  config, workdir = _CONFIG.value, _WORKDIR.value
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  summary = train_and_evaluate(config, workdir)
  first, last = summary.get("first_eval"), summary.get("last_eval")
  if first and last and "accuracy" in first:
    print(f"task accuracy: {first['accuracy']:.1%} at step {first['step']} -> "
          f"{last['accuracy']:.1%} at step {last['step']}; held-out loss "
          f"{first['loss']:.3f} -> {last['loss']:.3f}")
  print(json.dumps({k: v for k, v in summary.items()
                    if k in ("step", "last_checkpoint", "preempted", "plot", "workdir")}))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
