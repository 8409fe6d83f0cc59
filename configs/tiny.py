"""A tiny MiniMax-M1: the released structure (7 lightning + 1 softmax per group, top-2 MoE,
post-norm DeepNorm, partial RoPE) at a size that trains on 2 CPU cores.

  python -m experiments.train --config=configs/tiny.py --workdir=runs/tiny   # the demo
  python -m experiments.train --config=configs/tiny.py:runlocal --workdir=/tmp/tiny_local
  python -m experiments.inspect_model --config=configs/tiny.py --forward

Variants (after the colon, comma-separated): `layers=N` (a multiple of 8; default 16),
`runlocal` (common.apply_runlocal: a few steps at even smaller widths).

The train/optimizer/data sections are the embedded demo: the arithmetic task on CPU.
Only what differs from configs/common.py (the release) is stated here.
"""
from configs import common


def get_config(arg=None):
  variants = common.parse_variants(arg, {"layers": 16, "runlocal": False})
  config = common.get_config()
  model = config.model
  # Room for bytes plus a few special tokens.
  model.vocab_size = 512
  model.hidden_size = 64
  # Two repeats of the released 8-layer group by default, so the scanned stack really scans.
  common.set_num_layers(model, variants["layers"])
  model.num_attention_heads = 4
  model.num_key_value_heads = 2
  model.head_dim = 16
  model.intermediate_size = 128
  model.num_local_experts = 8
  # Half the head dim rotates, as in the released model.
  model.rotary_dim = 8
  model.rope_theta = 10_000.0
  model.max_position_embeddings = 4096
  # Small blocks so short CPU sequences still cross block boundaries.
  model.block_size = 32
  # CPUs emulate bf16; float32 is faster there. No remat: activations are tiny.
  model.dtype = "float32"
  model.param_dtype = "float32"
  model.remat = False

  # The demo: a few minutes on 2 CPU cores.
  t = config.train
  t.num_steps = 400
  t.batch_size = 8
  t.seq_len = 64
  t.log_every = 20
  t.eval_every = 100
  t.checkpoint_every = 100
  t.eval_examples = 64
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 50
  config.data.task_options.arithmetic.max_digits = 2

  if variants["runlocal"]:
    common.apply_runlocal(config)
  return config
