"""A tiny MiniMax-M1: the released structure (7 lightning + 1 softmax per group, top-2 MoE,
post-norm DeepNorm, partial RoPE) at a size that trains on 2 CPU cores.

  python -m experiments.inspect_model --config=configs/tiny.py --forward
  python -m experiments.train --config=configs/tiny.py --workdir=runs/tiny   # the demo

The train/optimizer/data sections are the embedded demo: the arithmetic task on CPU.
"""
import ml_collections

from m1jax.train.defaults import add_training_sections

_NUM_LAYERS = 16


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model = ml_collections.ConfigDict()
  # Room for bytes plus a few special tokens.
  model.vocab_size = 512
  model.hidden_size = 64
  # Two repeats of the released 8-layer group, so the scanned stack really scans.
  model.num_hidden_layers = _NUM_LAYERS
  model.num_attention_heads = 4
  model.num_key_value_heads = 2
  model.head_dim = 16
  model.intermediate_size = 128
  model.num_local_experts = 8
  model.num_experts_per_tok = 2
  model.attn_type_list = ([0] * 7 + [1]) * (_NUM_LAYERS // 8)
  # Half the head dim rotates, as in the released model.
  model.rotary_dim = 8
  model.rope_theta = 10_000.0
  model.max_position_embeddings = 4096
  model.layernorm_full_attention_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_full_attention_beta = 1.0
  model.layernorm_linear_attention_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_linear_attention_beta = 1.0
  model.layernorm_mlp_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_mlp_beta = 1.0
  model.postnorm = True
  model.rms_norm_eps = 1e-5
  model.lightning_norm_eps = 1e-6
  # Small blocks so short CPU sequences still cross block boundaries.
  model.block_size = 32
  model.router_aux_loss_coef = 0.001
  model.tie_word_embeddings = False
  model.initializer_range = 0.02
  model.dtype = "float32"
  model.param_dtype = "float32"
  model.lm_head_fp32 = True
  model.moe_impl = "ragged"
  model.lightning_impl = "auto"
  model.scan_layers = True
  model.remat = False
  model.remat_policy = "nothing_saveable"

  add_training_sections(config)
  # The demo: a few minutes on 2 CPU cores.
  config.train.num_steps = 400
  config.train.batch_size = 8
  config.train.seq_len = 64
  config.train.log_every = 20
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  config.train.eval_examples = 64
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 50
  config.data.task = "arithmetic"
  config.data.task_options.arithmetic.max_digits = 2
  return config
