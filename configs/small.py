"""A few-hundred-million-parameter MiniMax-M1 for one GPU (same structure as the release).

  python -m experiments.inspect_model --config=configs/small.py
  python -m experiments.train --config=configs/small.py --workdir=runs/small
"""
import ml_collections

from m1jax.train.defaults import add_training_sections

_NUM_LAYERS = 16


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model = ml_collections.ConfigDict()
  model.vocab_size = 32_768
  model.hidden_size = 1024
  # Two repeats of the released 7 lightning + 1 softmax group.
  model.num_hidden_layers = _NUM_LAYERS
  model.num_attention_heads = 16
  model.num_key_value_heads = 4
  model.head_dim = 64
  model.intermediate_size = 768
  model.num_local_experts = 8
  model.num_experts_per_tok = 2
  model.attn_type_list = ([0] * 7 + [1]) * (_NUM_LAYERS // 8)
  model.rotary_dim = 32
  model.rope_theta = 10_000_000.0
  model.max_position_embeddings = 1_048_576
  model.layernorm_full_attention_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_full_attention_beta = 1.0
  model.layernorm_linear_attention_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_linear_attention_beta = 1.0
  model.layernorm_mlp_alpha = (2 * _NUM_LAYERS) ** 0.25
  model.layernorm_mlp_beta = 1.0
  model.postnorm = True
  model.rms_norm_eps = 1e-5
  model.lightning_norm_eps = 1e-6
  model.block_size = 256
  model.router_aux_loss_coef = 0.001
  model.tie_word_embeddings = False
  model.initializer_range = 0.02
  model.dtype = "bfloat16"
  model.param_dtype = "float32"
  model.lm_head_fp32 = True
  model.moe_impl = "ragged"
  model.lightning_impl = "auto"
  model.scan_layers = True
  model.remat = True
  # Keep matmul outputs without a batch dim (weights-side), recompute the rest.
  model.remat_policy = "dots_with_no_batch_dims_saveable"

  add_training_sections(config)
  config.train.num_steps = 20_000
  config.train.batch_size = 32
  config.train.seq_len = 2048
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  # An H100's dense bf16 peak, for the MFU estimate; set it for the GPU you run on.
  config.train.peak_flops_per_device = 989e12
  config.optimizer.learning_rate = 1e-3
  config.optimizer.warmup_steps = 1000
  config.data.task_options.arithmetic.max_digits = 6
  return config
