"""Train a MiniMax-M1 model: flags -> m1jax.train.train_and_evaluate(config, workdir).

  python -m experiments.train                      # the demo: tiny model, arithmetic, CPU
  python -m experiments.train --config=configs/small.py --workdir=runs/small
  python -m experiments.train --config.train.num_steps=50 --config.optimizer.learning_rate=1e-3

Overrides use ml_collections' `--config.key=value`; an unknown key is an error. Rerunning
with the same workdir resumes from its latest checkpoint; SIGTERM saves and exits cleanly.
"""
import json
import os
import runpy
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/tiny.py", "Path of a configs/*.py file (get_config).")
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/tiny", "Checkpoints, metrics.jsonl, tensorboard/ and curves.png go here.")


def unknown_override_keys(argv: list[str]) -> list[str]:
  """Messages for every `--config.a.b=v` whose key the chosen config file does not have."""
  path = "configs/tiny.py"
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  if not overrides:
    return []
  config = runpy.run_path(path)["get_config"]()
  problems = []
  for dotted in overrides:
    node, walked = config, []
    for key in dotted.split("."):
      if not hasattr(node, "keys") or key not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        where = ".".join(walked) or "the config"
        problems.append(f"unknown config key {dotted!r} in --config.{dotted}: {where} has no "
                        f"{key!r} (valid: {', '.join(valid)})")
        break
      node, walked = node[key], walked + [key]
  return problems


def _parse_flags(argv):
  problems = unknown_override_keys(argv)
  if problems:
    sys.exit("error: " + "\n       ".join(problems))
  return flags.FLAGS(argv)


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
  app.run(main, flags_parser=_parse_flags)
