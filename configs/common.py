"""What every configs/*.py starts from: default sections, the variant syntax, `runlocal`.

A config file states only what differs from `get_config()` here. The model section's
defaults ARE the released MiniMax-M1 (docs/MODEL.md §3.1), trained as released (bf16
compute, remat) on fp32 master weights: the release is the one configuration every other
is measured against, so each config file then reads as "the release, except ...", and minimax_m1_456b.py states no model field.

Variants follow big_vision: `--config=configs/small.py:layers=8,runlocal` calls
`get_config("layers=8,runlocal")`; `parse_variants` reads that string.

Imports only ml_collections: loading a config must not load jax, the trainer or m1jax.
"""
import ml_collections

# The released layer group: 7 lightning (0) then 1 softmax (1) attention layers.
LAYER_GROUP = (0, 0, 0, 0, 0, 0, 0, 1)


def attn_type_list(num_layers: int) -> list[int]:
  """The released 7 lightning + 1 softmax pattern, repeated to `num_layers` layers."""
  if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
    raise ValueError(f"layers={num_layers!r}: must be a positive int")
  if num_layers % len(LAYER_GROUP):
    group = len(LAYER_GROUP)
    raise ValueError(f"layers={num_layers}: must be a multiple of {group} (the released "
                     f"group of 7 lightning + 1 softmax layers), e.g. "
                     f"{max(group, num_layers // group * group)}")
  return list(LAYER_GROUP) * (num_layers // len(LAYER_GROUP))


def deepnorm_alpha(num_layers: int) -> float:
  """DeepNet's decoder residual weight for `num_layers` layers; 3.5566 for the release's 80."""
  return (2 * num_layers) ** 0.25


def set_layer_types(model: ml_collections.ConfigDict, types) -> None:
  """Sets depth and layer types together, and the DeepNorm alphas that depend on depth."""
  types = list(types)
  model.num_hidden_layers = len(types)
  model.attn_type_list = types
  alpha = deepnorm_alpha(len(types))
  model.layernorm_full_attention_alpha = alpha
  model.layernorm_linear_attention_alpha = alpha
  model.layernorm_mlp_alpha = alpha


def set_num_layers(model: ml_collections.ConfigDict, num_layers: int) -> None:
  """`num_layers` layers of the released pattern (a multiple of 8), with its DeepNorm alpha."""
  set_layer_types(model, attn_type_list(num_layers))


def model_config() -> ml_collections.ConfigDict:
  """Every ModelConfig field, at the released MiniMax-M1's value (m1jax/config.py)."""
  model = ml_collections.ConfigDict()
  # Vocabulary of the release's GPT2-style BPE tokenizer (V).
  model.vocab_size = 200_064
  # Model width M; note H * D = 8192 != M in the release.
  model.hidden_size = 6144
  # Depth L: ten repeats of the 8-layer group (set with set_num_layers, which keeps
  # attn_type_list and the DeepNorm alphas in step).
  model.num_hidden_layers = 80
  # Query heads H of both layer types.
  model.num_attention_heads = 64
  # K/V heads of the softmax layers (GQA); lightning layers use H heads throughout.
  model.num_key_value_heads = 8
  # Head dim D of both layer types.
  model.head_dim = 128
  # SwiGLU width F of each expert.
  model.intermediate_size = 9216
  # Experts E per layer; no shared expert.
  model.num_local_experts = 32
  # Experts R each token is routed to (top-k).
  model.num_experts_per_tok = 2
  # One code per layer: 0 = lightning (linear) attention, 1 = softmax attention.
  model.attn_type_list = attn_type_list(80)
  # Partial NeoX RoPE: the first 64 of the 128 head dims rotate, in softmax layers only.
  model.rotary_dim = 64
  # RoPE base.
  model.rope_theta = 10_000_000.0
  # The longest position the release declares (10.24M tokens); nothing is allocated for it.
  model.max_position_embeddings = 10_240_000
  # Post-norm DeepNorm residual out = alpha * norm(x) + beta * f(norm(x)), per sublayer
  # kind; alpha = (2 L) ** 0.25 (deepnorm_alpha), beta = 1 (docs/MODEL.md §4.3).
  model.layernorm_full_attention_alpha = deepnorm_alpha(80)
  # DeepNorm beta of the softmax attention sublayer.
  model.layernorm_full_attention_beta = 1.0
  # DeepNorm alpha of the lightning attention sublayer.
  model.layernorm_linear_attention_alpha = deepnorm_alpha(80)
  # DeepNorm beta of the lightning attention sublayer.
  model.layernorm_linear_attention_beta = 1.0
  # DeepNorm alpha of the MoE sublayer.
  model.layernorm_mlp_alpha = deepnorm_alpha(80)
  # DeepNorm beta of the MoE sublayer.
  model.layernorm_mlp_beta = 1.0
  # True: the residual branch carries the normed input, as the released weights expect.
  model.postnorm = True
  # Epsilon of the pre-sublayer and final RMSNorms.
  model.rms_norm_eps = 1e-5
  # Epsilon of the lightning output norm: the remote code's class default, not rms_norm_eps.
  model.lightning_norm_eps = 1e-6
  # Chunk length of the chunked lightning operator (BLOCK = 256 in the remote code); any
  # value gives the same math, it trades matmul size against the number of chunks.
  model.block_size = 256
  # Weight of the load-balancing loss added to the training loss.
  model.router_aux_loss_coef = 0.001
  # MiniMax-M1 has an untied lm_head; ModelConfig rejects True.
  model.tie_word_embeddings = False
  # Std of the normal init of every weight matrix.
  model.initializer_range = 0.02
  # Activation / matmul-input dtype: bf16, as the release trained.
  model.dtype = "bfloat16"
  # Stored parameter dtype (the router always keeps float32). float32 master weights, bf16
  # compute: at the release's LR 8e-5 most AdamW steps are below half a bf16 ulp of a weight
  # (one ulp at |w| = 0.02 is 1.2e-4), so bf16 weights would round them away.
  model.param_dtype = "float32"
  # LM head matmul in float32, for exact RL log-probs (M1 report §3.2).
  model.lm_head_fp32 = True
  # MoE dispatch (m1jax/ops/grouped_matmul.py): sorted tokens through a grouped matmul,
  # "auto" (megablox on TPU, ragged on GPU, chunked on CPU: the measured-fastest exact path),
  # "ragged" (jax.lax.ragged_dot), "chunked" (expert-aligned chunks in one batched matmul),
  # "megablox" (TPU Pallas gmm/tgmm); or "dense" (every expert on every token, the reference).
  model.moe_impl = "auto"
  # Expert parallelism (a mesh with expert > 1, m1jax/layers/moe_ep.py): the token exchange,
  # "ragged" (dropless ragged_all_to_all; TPU), "padded" (all_to_all with a fixed capacity per
  # (device, expert), every backend; drops are counted in RouterStats.dropped) or "auto"
  # (ragged when lowering for TPU, else padded).
  model.moe_all_to_all = "auto"
  # Padded exchange: capacity per (device, expert) = factor * local tokens * top_k / experts
  # (capped at the local tokens, so any factor >= experts / top_k never drops).
  model.moe_capacity_factor = 2.0
  # Lightning operator, forwarded to m1jax.ops.lightning_attention(impl=...); "auto" picks
  # the kernel for the backend.
  model.lightning_impl = "auto"
  # Softmax attention (m1jax/ops/attention_impl.py): "xla" materialises fp32 [B,H,T,S]
  # logits (16 GiB per 8K row at 64 heads); "blockwise" is pure-JAX flash attention (any
  # platform, O(T x block) memory); "cudnn" (GPU) and "splash" (TPU) are the vendor
  # kernels; "auto" takes splash/cudnn where the call fits them, else blockwise.
  model.attention_impl = "auto"
  # nn.scan over the repeating layer group, so compile time does not grow with depth.
  model.scan_layers = True
  # Rematerialise each decoder layer in the backward pass (activation memory for FLOPs).
  model.remat = True
  # What remat keeps: a jax.checkpoint_policies name.
  model.remat_policy = "nothing_saveable"
  return model


def train_config() -> ml_collections.ConfigDict:
  """The trainer's settings (m1jax/train/loop.py), sized for a short single-device run."""
  t = ml_collections.ConfigDict()
  # Seed of params init and of the synthetic data streams.
  t.seed = 0
  # Params to start a fresh run from instead of a random init (the optimizer starts fresh):
  # an experiments.convert_hf output, another trainer workdir, or an HF checkpoint directory.
  # Ignored once the workdir has a checkpoint of its own (the run resumes from that).
  t.init_from = ""
  # Optimizer steps; each consumes one batch of batch_size packed rows of seq_len tokens.
  t.num_steps = 1000
  # Packed rows per optimizer step.
  t.batch_size = 16
  # Tokens per packed row.
  t.seq_len = 128
  # Microbatches per step (batch_size must divide); trades memory for time, same loss.
  t.grad_accum_steps = 1
  # LM head + CE in chunks of this many positions per row (m1jax/chunked_loss.py), so the
  # [B,T,V] fp32 logits (6.1 GiB per 8K row at V = 200,064) never exist; same loss and
  # gradients. 0 = the full-logits path.
  t.loss_chunk_tokens = 1024
  # Steps between console / metrics.jsonl lines.
  t.log_every = 10
  # Steps between evaluations (and at the last step).
  t.eval_every = 200
  # Evaluate before the first step too, so the run reports accuracy before and after.
  t.eval_at_start = True
  # Packed held-out batches for the eval loss.
  t.eval_batches = 4
  # Held-out prompts for the task accuracy.
  t.eval_examples = 128
  # How task accuracy is measured: "generate" decodes greedily with m1jax.generate (the real
  # sampler, hybrid cache and all); "teacher_forced" takes the argmax at every completion
  # position in one forward pass. Exact match is the same number either way (greedy decoding
  # reproduces the reference iff every argmax on its path does); the grader's score differs,
  # since only "generate" grades what the model would actually write.
  t.eval_accuracy_mode = "generate"
  # Steps between checkpoints (and at the last step, and on SIGTERM).
  t.checkpoint_every = 200
  # Checkpoints kept in the workdir; older ones are deleted.
  t.keep_checkpoints = 3
  # Save in the background while training continues.
  t.async_checkpointing = True
  # Also write TensorBoard event files under <workdir>/tensorboard.
  t.tensorboard = True
  # Write <workdir>/curves.png at the end.
  t.plot = True
  # Peak FLOP/s of one device for the MFU estimate (e.g. 989e12 for an H100's dense bf16);
  # 0 leaves MFU out (CPU).
  t.peak_flops_per_device = 0.0
  return t


def optimizer_config() -> ml_collections.ConfigDict:
  """AdamW with warmup and a decay schedule (m1jax/train/optimizer.py)."""
  o = ml_collections.ConfigDict()
  # Peak learning rate, reached at the end of warmup.
  o.learning_rate = 3e-4
  # "cosine": linear warmup, then cosine decay to final_lr_fraction * learning_rate;
  # "constant": linear warmup, then flat.
  o.schedule = "cosine"
  # Steps of linear warmup from 0.
  o.warmup_steps = 100
  # Where cosine decay ends, as a fraction of learning_rate.
  o.final_lr_fraction = 0.1
  # AdamW first-moment decay. The M1 report (§3.2) trained with b1 0.9, b2 0.95, eps 1e-15:
  # gradients there spanned 1e-18..1e-5 and the usual (0.9, 0.999, 1e-8) did not converge.
  o.b1 = 0.9
  # AdamW second-moment decay (M1 report §3.2).
  o.b2 = 0.95
  # AdamW epsilon, small enough not to swamp 1e-18 gradients (M1 report §3.2).
  o.eps = 1e-15
  # Decoupled weight decay; norm scales are excluded by name.
  o.weight_decay = 0.1
  # Global-norm gradient clipping; 0 disables it.
  o.grad_clip_norm = 1.0
  return o


def data_config() -> ml_collections.ConfigDict:
  """Training data (m1jax/train/data/): a built-in task by default, so no files are needed."""
  d = ml_collections.ConfigDict()
  # "task": a built-in verifiable task (m1jax.tasks); "text": user .txt/.jsonl files.
  d.source = "task"
  # The task trained on when source is "task".
  d.task = "arithmetic"
  # Keyword options of each task class; the entry named by `task` is used.
  d.task_options = ml_collections.ConfigDict({
      "arithmetic": {"min_digits": 1, "max_digits": 3},
      "reversal": {"min_len": 2, "max_len": 8},
      "sort": {"min_len": 2, "max_len": 8},
  })
  # Comma-separated globs of .txt (blank-line separated documents) or .jsonl files
  # (a `text_key` field, or "prompt" + "completion").
  d.paths = ""
  # The .jsonl field holding a document's text.
  d.text_key = "text"
  # Every nth text document is held out for the eval loss.
  d.eval_every_nth = 20
  # "byte", or the path of an HF tokenizer.json (then name its special tokens below).
  d.tokenizer = "byte"
  # Beginning-of-document token of a tokenizer.json ("" for none).
  d.bos_token = ""
  # End-of-document token of a tokenizer.json ("" for none).
  d.eos_token = ""
  # Padding token of a tokenizer.json ("" for none).
  d.pad_token = ""
  # Independent document streams a global batch is assembled from, each packed on its own
  # (m1jax/train/data/pipeline.py); each process reads only its own. 0 = one per process; a
  # fixed value makes the data independent of the process count (e.g. to resume on fewer
  # hosts, or to compare a multi-host run with one process).
  d.slices = 0
  return d


def rl_config() -> ml_collections.ConfigDict:
  """The RL section (m1jax/rl/): CISPO by default, DAPO and GRPO as presets. Keys that are
  None are filled from the `algorithm` preset (m1jax/rl/config.py PRESETS) unless set."""
  from ml_collections import config_dict
  r = ml_collections.ConfigDict()
  # Preset that fills the None keys below: "cispo" (M1), "dapo" or "grpo".
  r.algorithm = "cispo"
  # Per-token policy loss (m1jax/rl/losses.py registry): ppo_clip, cispo, reinforce, gspo.
  r.policy_loss = config_dict.placeholder(str)
  # "token-mean" (DAPO, CISPO), "seq-mean-token-mean" (GRPO) or "group-token-mean" (the
  # M1 report's Eq. 4 read literally: one 1/sum|o_i| per prompt's group).
  r.loss_agg_mode = config_dict.placeholder(str)
  # PPO clip range [1 - epsilon_low, 1 + epsilon_high] of ppo_clip / gspo, and of CISPO's
  # optional unified mask (GRPO 0.2/0.2, DAPO 0.2/0.28).
  r.epsilon_low = config_dict.placeholder(float)
  # See epsilon_low.
  r.epsilon_high = config_dict.placeholder(float)
  # CISPO's importance-weight cap 1 + is_epsilon_high (> 0; the M1 report's value is not
  # published). 0.28 matches DAPO's epsilon_high; 4.0 is the ScaleRL-style wide cap.
  r.is_epsilon_high = config_dict.placeholder(float)
  # CISPO's lower bound 1 - is_epsilon_low on the weight; None = none (the M1 setting).
  r.is_epsilon_low = config_dict.placeholder(float)
  # CISPO times the M1 report's Eq. 6-7 mask (PPO's trust region); off in the report's runs.
  r.unified_mask = False
  # Dual clip of ppo_clip for A < 0 (loss capped at -c*A); 0 = off (DAPO preset 10).
  r.dual_clip_c = config_dict.placeholder(float)
  # DAPO's dynamic sampling: drop whole groups whose rewards are all equal (no refill).
  r.dynamic_sampling = config_dict.placeholder(bool)
  # k3 KL to the initial (SFT) policy, as GRPO's beta; 0 = off (all presets).
  r.kl_coef = 0.0
  # Completions sampled per prompt (G >= 2: the group is the baseline).
  r.num_generations = 8
  # Prompts per generation batch (rollout step): prompts_per_step * num_generations rows.
  r.prompts_per_step = 8
  # Minibatch updates per generation batch, each on 1/num_minibatches of the rows; with
  # num_epochs this is mu, the off-policy-ness CISPO is about (M1: 16).
  r.num_minibatches = 4
  # Passes over the generation batch (mu = num_minibatches * num_epochs).
  r.num_epochs = 1
  # Microbatches per minibatch update (memory only; the gradient is the same).
  r.micro_batches = 1
  # Tokens sampled per completion at most (L_max of the overlong penalty).
  r.max_new_tokens = 24
  # Trainer row length: prompt + completion, right-padded (fixed: one compile).
  r.seq_len = 32
  # Sampling temperature; the trainer divides its logits by the same value.
  r.temperature = 1.0
  # Nucleus / top-k truncation. Anything but 1.0 / 0 samples from a distribution other than
  # the one whose log-probs the loss uses, biasing the ratio; refused unless allowed below.
  r.top_p = 1.0
  # See top_p (0 = off).
  r.top_k = 0
  # Accept top_p < 1 or top_k > 0 anyway.
  r.allow_truncated_sampling = False
  # M1's early truncation (§3.2): stop a row after this many consecutive tokens each with
  # probability > early_stop_prob (M1: 3000); None = off.
  r.early_stop_tokens = config_dict.FieldReference(3000, field_type=int)
  # See early_stop_tokens.
  r.early_stop_prob = 0.99
  # What an early-stopped row gets: "grade" (graded as is, M1), "mask" (no gradient) or
  # "zero_adv" (in the group statistics, advantage 0).
  r.truncated_policy = "grade"
  # DAPO's soft overlong penalty buffer L_cache in tokens; 0 = off (lengths are fixed by
  # the problem in the arithmetic task).
  r.overlong_buffer = 0
  # Penalty at max_new_tokens.
  r.overlong_penalty = 1.0
  # Divide advantages by the group's std (False: Dr. GRPO's R - mean).
  r.std_normalize = True
  # std's ddof (1 = Bessel, as TRL, verl and Tunix).
  r.std_ddof = 1
  # Added to the std.
  r.adv_eps = 1e-6
  # pi_old: "sampler" (the sampler's log-probs) or "trainer" (recomputed once per
  # generation batch before the updates). Either way frozen for the whole batch.
  r.old_logprobs = "sampler"
  # Steps between train/infer mismatch checks (trainer recompute vs sampler; 0 = never).
  r.mismatch_check_every = 10
  # SFT trainer workdir the policy starts from (latest checkpoint); fresh optimizer.
  r.init_checkpoint = "runs/tiny"
  # Rollout steps (generation batches).
  r.num_steps = 30
  # AdamW (b1, b2, eps from the optimizer section: the M1 settings), constant after warmup.
  # 3e-5 on the tiny demo: 1e-4 moved the SFT policy's greedy accuracy down within a few
  # steps in a pilot (WORKSPACE_NOTES.md, Issue 14).
  r.learning_rate = 3e-5
  # Warmup steps (optimizer updates) from 0.
  r.warmup_steps = 3
  # Decoupled weight decay.
  r.weight_decay = 0.0
  # Global-norm gradient clipping; 0 = off.
  r.grad_clip_norm = 1.0
  # Seed of prompts, sampler keys and minibatch permutations.
  r.seed = 0
  # Prompt indices start here, away from the SFT stream's indices.
  r.prompt_offset = 1_000_000
  # JSONL of pass@k-filtered prompts (experiments/rl_filter_data.py): train on those stream
  # indices, cycled, instead of the stream from prompt_offset; "" = the stream.
  r.prompt_file = ""
  # Steps between held-out evals (and at the start and end).
  r.eval_every = 10
  # Held-out prompts (split 1) for eval.
  r.eval_examples = 64
  # Samples per held-out prompt for the sampled avg@k accuracy at the RL temperature.
  r.eval_samples = 4
  # Steps between console lines.
  r.log_every = 1
  # Steps between checkpoints (and at the end and on SIGTERM).
  r.checkpoint_every = 10
  # Checkpoints kept.
  r.keep_checkpoints = 2
  # TensorBoard events under <workdir>/tensorboard.
  r.tensorboard = True
  # <workdir>/rl_curves.png at the end.
  r.plot = True
  return r


def get_config() -> ml_collections.ConfigDict:
  """The released model with the default train/optimizer/data sections."""
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.train = train_config()
  config.optimizer = optimizer_config()
  config.data = data_config()
  # Device mesh (m1jax/sharding.py): sizes of the axes data, fsdp, expert, tensor, sequence,
  # e.g. "fsdp=64,expert=8"; -1 takes the remaining devices, unnamed axes are 1. The default
  # shards params, optimizer state and batch over all devices (FSDP).
  config.mesh = "fsdp=-1"
  return config


def _parse_value(name: str, text: str, default):
  """`text` as the type of `default`; bools take true/false/1/0."""
  if isinstance(default, bool):
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise ValueError(f"variant {name}={text!r}: expected true or false")
  for kind, noun in ((int, "an int"), (float, "a float")):
    if isinstance(default, kind):
      try:
        return kind(text)
      except ValueError:
        raise ValueError(f"variant {name}={text!r}: expected {noun}") from None
  return text


def parse_variants(arg: str | None, allowed: dict) -> dict:
  """Parses `get_config`'s argument: comma-separated `key=value` or bare `flag` variants.

  Args:
    arg: what follows the colon in `--config=path:arg`; None or "" means no variant.
    allowed: every variant name and its default; the default's type is the value's type
      (a bool variant may be given bare, meaning True).

  Returns:
    `allowed` with the given variants' values in place of the defaults.

  Raises:
    ValueError: naming the offending variant and listing the valid ones.
  """
  values = dict(allowed)
  seen = set()
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, has_value, text = item.partition("=")
    name = name.strip()
    if name not in allowed:
      valid = ", ".join(f"{k}" if isinstance(v, bool) else f"{k}=<{type(v).__name__}>"
                        for k, v in sorted(allowed.items()))
      raise ValueError(f"unknown config variant {name!r} in {arg!r}; valid: {valid or 'none'}")
    if name in seen:
      raise ValueError(f"config variant {name!r} is given twice in {arg!r}")
    seen.add(name)
    if has_value:
      values[name] = _parse_value(name, text.strip(), allowed[name])
    elif isinstance(allowed[name], bool):
      values[name] = True
    else:
      raise ValueError(f"config variant {name!r} needs a value ({name}=...) in {arg!r}")
  return values


def _layer_period(types: list[int]) -> int:
  """Smallest p dividing the depth such that the layer types repeat every p layers."""
  n = len(types)
  for p in range(1, n + 1):
    if n % p == 0 and all(types[i] == types[i % p] for i in range(n)):
      return p
  return n


def apply_runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks any config to a CPU run of about a minute (mostly compiling), same structure.

  Kept: the layer pattern (two periods when it repeats with a period of at most 8, so the
  scanned stack still scans; else its first 8 layers), GQA, top-k routing, partial RoPE's
  ratio, post-norm DeepNorm (alphas follow the new depth), the remat and impl choices.
  Replaced: widths, depth, steps, batch, dtypes (float32: CPUs emulate bf16) and the data,
  which becomes a built-in task with the byte tokenizer when it was text files, since those
  files and tokenizers are not in the repo.
  """
  model = config.model
  types = list(model.attn_type_list)
  period = _layer_period(types)
  repeats = period < len(types) and period <= 8
  set_layer_types(model, types[:2 * period] if repeats else types[:8])
  rotary_fraction = model.rotary_dim / model.head_dim
  is_gqa = model.num_key_value_heads < model.num_attention_heads
  # Room for bytes plus a few special tokens.
  model.vocab_size = 512
  model.hidden_size = 32
  model.num_attention_heads = 4
  model.num_key_value_heads = 2 if is_gqa else 4
  model.head_dim = 8
  model.rotary_dim = max(2, int(round(8 * rotary_fraction / 2)) * 2)
  model.intermediate_size = 32
  model.num_local_experts = min(model.num_local_experts, 4)
  model.num_experts_per_tok = min(model.num_experts_per_tok, model.num_local_experts)
  model.max_position_embeddings = 4096
  # Short rows still cross several lightning chunks.
  model.block_size = 8
  model.dtype = "float32"
  model.param_dtype = "float32"

  t = config.train
  t.num_steps = 6
  # 8 rows: one per device on an 8-device host under the default all-FSDP mesh.
  t.batch_size = 8
  t.seq_len = 32
  t.grad_accum_steps = 1
  t.log_every = 2
  t.eval_every = 6
  t.checkpoint_every = 3
  t.eval_batches = 1
  t.eval_examples = 4
  t.peak_flops_per_device = 0.0
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 2)

  d = config.data
  if d.source != "task" or d.tokenizer != "byte":
    d.source, d.tokenizer = "task", "byte"
    d.bos_token = d.eos_token = d.pad_token = ""
  return config
