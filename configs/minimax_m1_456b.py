"""The released MiniMax-M1 / MiniMax-Text-01 architecture (456B total, 45.9B active).

Every value is from MiniMax-M1's config.json (docs/MODEL.md §3.1).

  python -m experiments.inspect_model --config=configs/minimax_m1_456b.py
"""
import ml_collections

from m1jax.train.defaults import add_training_sections

# 80 layers: 7 lightning (0) then 1 softmax (1), ten times; the last layer is softmax.
_ATTN_TYPE_LIST = ([0] * 7 + [1]) * 10
# DeepNet decoder alpha for 80 layers: (2 * 80) ** 0.25.
_DEEPNORM_ALPHA = 3.5565588200778455


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.model = model = ml_collections.ConfigDict()
  # Vocabulary of the GPT2-style BPE tokenizer.
  model.vocab_size = 200_064
  # Model width M; note H * D = 8192 != M.
  model.hidden_size = 6144
  model.num_hidden_layers = 80
  # Heads of both layer types; softmax layers use GQA with 8 KV heads.
  model.num_attention_heads = 64
  model.num_key_value_heads = 8
  model.head_dim = 128
  # Per-expert SwiGLU width F; 32 experts, top-2, no shared expert.
  model.intermediate_size = 9216
  model.num_local_experts = 32
  model.num_experts_per_tok = 2
  model.attn_type_list = _ATTN_TYPE_LIST
  # RoPE on the first 64 of 128 dims, base 1e7.
  model.rotary_dim = 64
  model.rope_theta = 10_000_000.0
  model.max_position_embeddings = 10_240_000
  # Post-norm DeepNorm: alpha on the normed residual, beta on the sublayer output.
  model.layernorm_full_attention_alpha = _DEEPNORM_ALPHA
  model.layernorm_full_attention_beta = 1.0
  model.layernorm_linear_attention_alpha = _DEEPNORM_ALPHA
  model.layernorm_linear_attention_beta = 1.0
  model.layernorm_mlp_alpha = _DEEPNORM_ALPHA
  model.layernorm_mlp_beta = 1.0
  model.postnorm = True
  model.rms_norm_eps = 1e-5
  # The lightning output norm's eps is the remote code's class default.
  model.lightning_norm_eps = 1e-6
  # BLOCK = 256 in the remote code.
  model.block_size = 256
  model.router_aux_loss_coef = 0.001
  model.tie_word_embeddings = False
  model.initializer_range = 0.02
  # Training precision: bf16 weights and activations; fp32 LM head for RL (M1 report §3.2).
  model.dtype = "bfloat16"
  model.param_dtype = "bfloat16"
  model.lm_head_fp32 = True
  model.moe_impl = "ragged"
  model.lightning_impl = "auto"
  model.scan_layers = True
  model.remat = True
  model.remat_policy = "nothing_saveable"

  # Pod-scale training: it builds here; running it needs a pod and a mesh.
  add_training_sections(config)
  config.train.num_steps = 100_000
  config.train.batch_size = 1024
  config.train.seq_len = 8192
  config.train.grad_accum_steps = 8
  config.train.eval_every = 2000
  config.train.checkpoint_every = 500
  config.train.peak_flops_per_device = 459e12  # TPU v5p dense bf16
  # Continued pretraining held LR at 8e-5 for 2.5T tokens (M1 report §2.1).
  config.optimizer.learning_rate = 8e-5
  config.optimizer.schedule = "constant"
  config.optimizer.warmup_steps = 2000
  config.data.source = "text"
  config.data.tokenizer = "tokenizer.json"  # the release's tokenizer (200,064 tokens)
  return config
