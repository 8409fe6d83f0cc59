"""Training throughput: steady-state tokens/s (and MFU when the device peak is known).

  python -m experiments.bench_train --config=configs/tiny.py      # CPU figure
  python -m experiments.bench_train --config=configs/small.py     # one GPU
  # meshes against one device, in one run, on 8 fake CPU devices:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench_train \
      --meshes="one;fsdp=8;data=2,fsdp=4;fsdp=4,tensor=2;data=2,tensor=4"

Times `--steps` jitted train steps after `--warmup` (compile) steps on synthetic packed
batches for each mesh (`--meshes`, ";"-separated; "one" = the first device alone; default:
the config's `mesh`), and writes benchmarks/results/train_<config>_<device>[_meshes].json,
with each mesh's tokens/s relative to the first.
"""
import json
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from m1jax import config_overrides

_CONFIG = config_overrides.define_config_file("config", "configs/tiny.py",
                                              "configs/*.py file")
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps (compile)")
_MESHES = flags.DEFINE_string("meshes", "", "';'-separated mesh specs; 'one' = one device")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "output directory")


def bench_mesh(config, spec: str, steps: int, warmup: int, hlo: bool = False) -> dict:
  """Compile + warmup, then `steps` timed steps of `config` on mesh `spec`; with `hlo`, the
  result also holds the compiled train step's text (per-device SPMD program) under "hlo"."""
  import jax
  from m1jax import MiniMaxM1ForCausalLM, ModelConfig, sharding
  from m1jax.train.data import make_tokenizer, packed_dataset
  from m1jax.train.loop import global_batch
  from m1jax.flops import train_flops_per_token
  from m1jax.train.optimizer import make_optimizer
  from m1jax.train.state import init_train_state, state_shardings
  from m1jax.train.step import check_batch, make_train_step

  t = config.train
  model_config = ModelConfig.from_dict(config.model.to_dict())
  model = MiniMaxM1ForCausalLM(model_config)
  tx, _ = make_optimizer(config.optimizer, t.num_steps)
  mesh = (sharding.make_mesh("fsdp=1", jax.devices()[:1]) if spec == "one"
          else sharding.make_mesh(spec))
  check_batch(mesh, t.batch_size, t.seq_len, t.grad_accum_steps)
  data = iter(packed_dataset(config.data, make_tokenizer(config.data, model_config.vocab_size),
                             seq_len=t.seq_len, batch_size=t.batch_size, seed=0, split=0))
  batches = [global_batch(next(data), mesh) for _ in range(4)]
  shardings = state_shardings(model, tx, mesh)
  state = init_train_state(model, tx, jax.random.key(0), mesh, shardings)
  train_step = make_train_step(model, tx, mesh, shardings, accum_steps=t.grad_accum_steps,
                               aux_coef=model_config.router_aux_loss_coef)

  compiled_text = None
  if hlo:  # traced under the mesh, as `train_step` does (the model reads it while tracing)
    with sharding.use_mesh(mesh):
      compiled_text = train_step.jitted.lower(state, batches[0]).compile().as_text()

  def run(n):
    nonlocal state
    tokens = 0
    for i in range(n):
      state, metrics = train_step(state, batches[i % 4])
      tokens += int(metrics["tokens"])
    jax.block_until_ready(state.params)
    return tokens

  start = time.perf_counter()
  run(warmup)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  tokens = run(steps)
  elapsed = time.perf_counter() - start
  result = {"mesh": sharding.describe(mesh), "devices": mesh.size,
            "warmup_and_compile_s": round(compile_s, 2), "step_s": round(elapsed / steps, 4),
            "tokens_per_s": round(tokens / elapsed, 1),
            "flops_per_token": train_flops_per_token(model_config, t.seq_len)}
  peak = t.peak_flops_per_device * mesh.size
  if peak > 0 and jax.devices()[0].platform != "cpu":
    result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / peak
  if hlo:
    result["hlo"] = compiled_text
  return result


def main(argv):
  del argv
  import jax
  config = _CONFIG.value
  t = config.train
  specs = [s.strip() for s in _MESHES.value.split(";") if s.strip()] or [config.mesh]
  runs = []
  for spec in specs:
    runs.append(bench_mesh(config, spec, _STEPS.value, _WARMUP.value))
    print(json.dumps(runs[-1]), flush=True)
  for run in runs:
    run["tokens_per_s_vs_first"] = round(run["tokens_per_s"] / runs[0]["tokens_per_s"], 3)
  device = jax.devices()[0]
  config_name = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
  variants = config_name.partition(":")[2]
  config_name = config_name.partition(":")[0]
  result = {
      "config": config_name, "variants": variants,
      "device": f"{device.platform}:{device.device_kind}",
      "device_count": jax.device_count(), "batch_size": t.batch_size, "seq_len": t.seq_len,
      "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
      "steps": _STEPS.value, "runs": runs}
  if len(runs) == 1:  # the single-mesh layout earlier results used
    result.update({k: v for k, v in runs[0].items() if k != "tokens_per_s_vs_first"})
  print(json.dumps(result, indent=1))
  os.makedirs(_OUT.value, exist_ok=True)
  name = f"train_{config_name.removesuffix('.py')}_{device.platform}"
  name += "_meshes" if len(runs) > 1 else ""
  with open(os.path.join(_OUT.value, name + ".json"), "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
