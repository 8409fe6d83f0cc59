"""The released MiniMax-M1 / MiniMax-Text-01 architecture (456B total, 45.9B active).

Every model value is from MiniMax-M1's config.json (docs/MODEL.md §3.1); they are
configs/common.py's defaults, so this file states only the pod-scale training run.

  python -m experiments.inspect_model --config=configs/minimax_m1_456b.py
  python -m experiments.inspect_model --config=configs/minimax_m1_456b.py:layers=8
  python -m experiments.train --config=configs/minimax_m1_456b.py:runlocal --workdir=/tmp/m1_local

Variants (after the colon, comma-separated): `layers=N` (a multiple of 8; default 80; the
DeepNorm alphas follow N), `runlocal` (common.apply_runlocal: the release's structure at CPU
size, on the built-in arithmetic task since the text data is not in the repo). Training
the full model needs a pod and a mesh; it builds here.
"""
from configs import common


def get_config(arg=None):
  variants = common.parse_variants(arg, {"layers": 80, "runlocal": False})
  config = common.get_config()
  common.set_num_layers(config.model, variants["layers"])

  t = config.train
  t.num_steps = 100_000
  t.batch_size = 1024
  t.seq_len = 8192
  t.grad_accum_steps = 8
  t.eval_every = 2000
  t.checkpoint_every = 500
  # TPU v5p dense bf16 peak, for the MFU estimate.
  t.peak_flops_per_device = 459e12
  # Continued pretraining held LR at 8e-5 for 2.5T tokens (M1 report §2.1).
  config.optimizer.learning_rate = 8e-5
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 2000
  config.data.source = "text"
  # The release's tokenizer (200,064 tokens).
  config.data.tokenizer = "tokenizer.json"

  if variants["runlocal"]:
    common.apply_runlocal(config)
  return config
