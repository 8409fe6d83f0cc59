"""RL on the tiny model: SFT on arithmetic (configs/tiny.py's train section, the checkpoint
in rl.init_checkpoint), then CISPO on the same task.

  python -m experiments.rl --config=configs/tiny_rl.py --workdir=runs/tiny_rl   # the demo
  python -m experiments.rl --config=configs/tiny_rl.py:algorithm=dapo
  python -m experiments.rl --config.rl.is_epsilon_high=4.0 --config.rl.num_minibatches=8

Variants: `algorithm=cispo|dapo|grpo` (the preset; `--config.rl.algorithm` works too),
`layers=N`, `runlocal` (a few steps of everything, for smoke tests).
Only what differs from configs/tiny.py and configs/common.py rl_config() is stated here.
"""
from configs import common
from configs import tiny


def get_config(arg=None):
  variants = common.parse_variants(arg, {"algorithm": "cispo", "layers": 16,
                                         "runlocal": False})
  config = tiny.get_config(f"layers={variants['layers']}")
  r = config.rl = common.rl_config()
  r.algorithm = variants["algorithm"]
  # The trainer's eval stream is split 1 of data.task: the same held-out prompts.
  r.init_checkpoint = "runs/tiny"
  if variants["runlocal"]:
    common.apply_runlocal(config)
    # A runlocal model needs its own (tiny, quickly trained) SFT checkpoint.
    r.init_checkpoint = "runs/tiny_runlocal"
    r.num_steps = 2
    r.prompts_per_step = 2
    r.num_generations = 4
    r.num_minibatches = 2
    r.eval_every = 2
    r.eval_examples = 4
    r.eval_samples = 1
    r.checkpoint_every = 2
    r.mismatch_check_every = 1
  return config
