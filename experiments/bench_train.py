"""Training throughput: steady-state tokens/s (and MFU when the device peak is known).

  python -m experiments.bench_train --config=configs/tiny.py      # CPU figure
  python -m experiments.bench_train --config=configs/small.py     # one GPU

Times `--steps` jitted train steps after `--warmup` (compile) steps on synthetic packed
batches, and writes benchmarks/results/train_<config>_<device>.json.
"""
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "configs/*.py file")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps (compile)")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "output directory")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  from m1jax import MiniMaxM1ForCausalLM, ModelConfig
  from m1jax.train.data import make_tokenizer, packed_dataset
  from m1jax.train.loop import _init_state
  from m1jax.train.metrics import flops_per_token
  from m1jax.train.optimizer import make_optimizer
  from m1jax.train.step import train_step

  config = _CONFIG.value
  t = config.train
  model_config = ModelConfig.from_dict(config.model.to_dict())
  model = MiniMaxM1ForCausalLM(model_config)
  tx, _ = make_optimizer(config.optimizer, t.num_steps)
  data = iter(packed_dataset(config.data, make_tokenizer(config.data, model_config.vocab_size),
                             seq_len=t.seq_len, batch_size=t.batch_size, seed=0, split=0))
  batches = [{k: jnp.asarray(v) for k, v in next(data).items()} for _ in range(4)]
  state = _init_state(model, tx, 0)

  def run(n):
    nonlocal state
    tokens = 0
    for i in range(n):
      state, metrics = train_step(state, batches[i % 4], model=model, tx=tx,
                                  accum_steps=t.grad_accum_steps,
                                  aux_coef=model_config.router_aux_loss_coef)
      tokens += int(metrics["tokens"])
    jax.block_until_ready(state.params)
    return tokens

  start = time.perf_counter()
  run(_WARMUP.value)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  tokens = run(_STEPS.value)
  elapsed = time.perf_counter() - start
  device = jax.devices()[0]
  result = {
      "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
      "device": f"{device.platform}:{device.device_kind}", "device_count": jax.device_count(),
      "batch_size": t.batch_size, "seq_len": t.seq_len, "dtype": model_config.dtype,
      "steps": _STEPS.value, "warmup_and_compile_s": round(compile_s, 2),
      "step_s": round(elapsed / _STEPS.value, 4),
      "tokens_per_s": round(tokens / elapsed, 1),
      "flops_per_token": flops_per_token(model_config, t.seq_len)}
  peak = t.peak_flops_per_device * jax.device_count()
  if peak > 0 and device.platform != "cpu":
    result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / peak
  print(json.dumps(result, indent=1))
  os.makedirs(_OUT.value, exist_ok=True)
  name = f"train_{result['config'].removesuffix('.py')}_{device.platform}.json"
  with open(os.path.join(_OUT.value, name), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
