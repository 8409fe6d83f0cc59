"""Train a MiniMax-M1 model: flags -> m1jax.train.train_and_evaluate(config, workdir).

  python -m experiments.train                      # the demo: tiny model, arithmetic, CPU
  python -m experiments.train --config=configs/small.py --workdir=runs/small
  python -m experiments.train --config=configs/minimax_m1_456b.py:runlocal --workdir=/tmp/m1
  python -m experiments.train --config.train.num_steps=50 --config.optimizer.learning_rate=1e-3

`--config=FILE:VARIANTS` passes VARIANTS to the file's get_config (e.g. `layers=8,runlocal`;
each config's docstring lists its own). Overrides use ml_collections' `--config.key=value`; an
unknown key is an error naming it (m1jax.config_overrides). Rerunning with the same workdir
resumes from its latest checkpoint; SIGTERM saves and exits cleanly.
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every save at INFO; progress lines come from the trainer itself.
  logging.set_verbosity(logging.WARNING)
  # Import after flag parsing so --help stays fast.
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
