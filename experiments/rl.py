"""SFT then RL: flags -> m1jax.rl.train_rl(config, workdir), training the SFT policy first
when rl.init_checkpoint has no checkpoint.

  python -m experiments.rl                           # the demo: SFT (runs/tiny) then CISPO
  python -m experiments.rl --config=configs/tiny_rl.py:algorithm=dapo --workdir=runs/dapo
  python -m experiments.rl --config.rl.num_steps=60 --config.rl.is_epsilon_high=4.0

The SFT phase is experiments.train with the same config (its train/optimizer/data
sections); the RL phase starts from that checkpoint's params with a fresh optimizer.
Rerunning with the same workdir resumes the RL run; SIGTERM saves and exits cleanly.
Overrides use `--config.rl.key=value`; an unknown key is an error naming it.
"""
import json
import os

from absl import app
from absl import flags
from absl import logging

from m1jax import config_overrides

_CONFIG = config_overrides.define_config_file(
    "config", "configs/tiny_rl.py",
    "A configs/*.py file with an rl section, optionally with variants: "
    "configs/tiny_rl.py:algorithm=dapo.")
_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/tiny_rl", "RL checkpoints, metrics.jsonl, tensorboard/ and "
    "rl_curves.png go here.")


def _fmt(result: dict) -> str:
  return (f"sampled pass@1 (T=1, avg@k) {result['pass@1_T1']:.1%}, greedy graded "
          f"{result['greedy_graded']:.1%}, greedy exact {result['greedy_exact']:.1%}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  # Import after flag parsing so --help stays fast.
  from m1jax.rl.config import resolve
  from m1jax.rl.loop import train_rl
  config, workdir = _CONFIG.value, _WORKDIR.value
  if "rl" not in config:
    raise app.UsageError(f"the config has no rl section; use configs/tiny_rl.py or add "
                         "config.rl = common.rl_config()")
  try:
    settings = resolve(config.rl)  # bad settings fail before any training
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  sft = settings.init_checkpoint
  if not os.path.isdir(os.path.join(sft, "checkpoints")):
    from m1jax.train import train_and_evaluate
    print(f"== SFT: no checkpoint in {os.path.abspath(sft)}; training it "
          f"({config.train.num_steps} steps)", flush=True)
    summary = train_and_evaluate(config, sft)
    first, last = summary.get("first_eval"), summary.get("last_eval")
    if first and last and "accuracy" in first:
      print(f"SFT task accuracy (greedy exact): {first['accuracy']:.1%} at step "
            f"{first['step']} -> {last['accuracy']:.1%} at step {last['step']}; graded "
            f"{first['graded_accuracy']:.1%} -> {last['graded_accuracy']:.1%}", flush=True)
  else:
    print(f"== SFT: using {os.path.abspath(sft)}", flush=True)
  print(f"== RL ({settings.algorithm}: {settings.policy_loss}, {settings.loss_agg_mode}, "
        f"G={settings.num_generations}, {settings.prompts_per_step} prompts/step, "
        f"mu={settings.mu}); workdir {os.path.abspath(workdir)}", flush=True)
  summary = train_rl(config, workdir)
  first, last = summary.get("first_eval"), summary.get("last_eval")
  if first and last:
    print(f"RL accuracy at step {first['step']}: {_fmt(first)}")
    print(f"RL accuracy at step {last['step']}: {_fmt(last)}")
  print(json.dumps({k: v for k, v in summary.items()
                    if k in ("step", "last_checkpoint", "preempted", "plot", "workdir")}))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
