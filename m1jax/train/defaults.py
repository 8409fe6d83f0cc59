"""The non-model config sections (train, optimizer, data) every configs/*.py starts from."""
import ml_collections


def add_training_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds config.train, config.optimizer and config.data with defaults; configs override."""
  config.train = t = ml_collections.ConfigDict()
  # Seed of params init and of the synthetic data streams.
  t.seed = 0
  # Optimizer steps; each consumes one batch of batch_size packed rows of seq_len tokens.
  t.num_steps = 1000
  t.batch_size = 16
  t.seq_len = 128
  # Microbatches per step (batch_size must divide); trades memory for time, same loss.
  t.grad_accum_steps = 1
  t.log_every = 10
  t.eval_every = 200
  # Evaluate before the first step too, so the run reports accuracy before and after.
  t.eval_at_start = True
  # Packed held-out batches for the eval loss, and prompts for the task accuracy.
  t.eval_batches = 4
  t.eval_examples = 128
  # How task accuracy is measured: "generate" decodes greedily with m1jax.generate (the real
  # sampler, hybrid cache and all); "teacher_forced" takes the argmax at every completion
  # position in one forward pass. Exact match is the same number either way (greedy decoding
  # reproduces the reference iff every argmax on its path does); the grader's score differs,
  # since only "generate" grades what the model would actually write.
  t.eval_accuracy_mode = "generate"
  t.checkpoint_every = 200
  t.keep_checkpoints = 3
  t.async_checkpointing = True
  t.tensorboard = True
  # Write <workdir>/curves.png at the end.
  t.plot = True
  # Peak FLOP/s of one device for the MFU estimate (e.g. 989e12 for an H100's dense bf16);
  # 0 leaves MFU out (CPU).
  t.peak_flops_per_device = 0.0

  config.optimizer = o = ml_collections.ConfigDict()
  o.learning_rate = 3e-4
  # "cosine": linear warmup, then cosine decay to final_lr_fraction * learning_rate.
  o.schedule = "cosine"
  o.warmup_steps = 100
  o.final_lr_fraction = 0.1
  # AdamW moments. The M1 report (§3.2) trained with b1 0.9, b2 0.95, eps 1e-15: gradients
  # there spanned 1e-18..1e-5 and the usual (0.9, 0.999, 1e-8) did not converge.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-15
  # Decoupled weight decay; norm scales are excluded by name.
  o.weight_decay = 0.1
  # Global-norm gradient clipping; 0 disables it.
  o.grad_clip_norm = 1.0

  config.data = d = ml_collections.ConfigDict()
  # "task": a built-in verifiable task (m1jax.tasks); "text": user .txt/.jsonl files.
  d.source = "task"
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
  d.text_key = "text"
  # Every nth text document is held out for the eval loss.
  d.eval_every_nth = 20
  # "byte", or the path of an HF tokenizer.json (then name its special tokens below).
  d.tokenizer = "byte"
  d.bos_token = ""
  d.eos_token = ""
  d.pad_token = ""
  return config
