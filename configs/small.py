"""A few-hundred-million-parameter MiniMax-M1 for one GPU (same structure as the release).

  python -m experiments.train --config=configs/small.py --workdir=runs/small
  python -m experiments.train --config=configs/small.py:runlocal --workdir=/tmp/small_local
  python -m experiments.inspect_model --config=configs/small.py

Variants (after the colon, comma-separated): `layers=N` (a multiple of 8; default 16),
`runlocal` (common.apply_runlocal: a CPU-sized smoke run of this config's structure).

Only what differs from configs/common.py (the release) is stated here.
"""
from configs import common


def get_config(arg=None):
  variants = common.parse_variants(arg, {"layers": 16, "runlocal": False})
  config = common.get_config()
  model = config.model
  model.vocab_size = 32_768
  model.hidden_size = 1024
  # Two repeats of the released 7 lightning + 1 softmax group by default.
  common.set_num_layers(model, variants["layers"])
  model.num_attention_heads = 16
  model.num_key_value_heads = 4
  model.head_dim = 64
  model.intermediate_size = 768
  model.num_local_experts = 8
  model.rotary_dim = 32
  model.max_position_embeddings = 1_048_576
  # Keep matmul outputs without a batch dim (weights-side), recompute the rest.
  model.remat_policy = "dots_with_no_batch_dims_saveable"

  t = config.train
  t.num_steps = 20_000
  t.batch_size = 32
  t.seq_len = 2048
  t.eval_every = 1000
  t.checkpoint_every = 1000
  # An H100's dense bf16 peak, for the MFU estimate; set it for the GPU you run on.
  t.peak_flops_per_device = 989e12
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 1000
  config.data.task_options.arithmetic.max_digits = 6

  if variants["runlocal"]:
    common.apply_runlocal(config)
  return config
