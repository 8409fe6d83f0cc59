"""A trainer config small enough that a test compiles and runs it in seconds on CPU."""
from configs import tiny


def micro_config(**train):
  config = tiny.get_config()
  m = config.model
  m.num_hidden_layers = 2
  m.attn_type_list = (0, 1)
  m.hidden_size = 32
  m.num_attention_heads = 2
  m.num_key_value_heads = 1
  m.intermediate_size = 32
  m.num_local_experts = 4
  m.block_size = 8
  t = config.train
  t.num_steps, t.batch_size, t.seq_len = 6, 4, 48
  t.log_every, t.eval_every, t.checkpoint_every = 2, 1000, 3
  # No eval unless a test asks: its compile would dominate these tests' time.
  t.eval_batches, t.eval_examples, t.eval_at_start = 0, 0, False
  t.async_checkpointing, t.tensorboard, t.plot = True, False, False
  for key, value in train.items():
    t[key] = value
  config.optimizer.warmup_steps = 2
  return config
