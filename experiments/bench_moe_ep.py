"""Expert parallelism on 8 fake CPU devices: train-step tokens/s of meshes with an `expert`
axis (and the other axes) against one device, and the all-to-all bytes each device moves per
step, read from the compiled program and set against the analytic count.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python -m experiments.bench_moe_ep --config=configs/tiny.py:layers=8 [--steps=10] \
      [--meshes="one;expert=8;..."]

The model is `--config` (above: 7 lightning + 1 softmax layers, width 64) with 8 experts,
unrolled layers (so every all-to-all appears once per layer in the program), and the padded
exchange (`moe_all_to_all=padded`; XLA:CPU has no ragged all-to-all) at `--capacity_factor`.

Analytic count, per device and step: each MoE layer sends its [E·C, M] buffer to the other
expert shards and receives the outputs back, and the backward does the same for the
gradients: 4 all-to-alls of E·C·M·bytes each, C = capacity(tokens per device, top_k, E,
factor) (m1jax.layers.moe_ep.capacity). The compiled count is the result bytes of every
`all-to-all` instruction of the partitioned program. Throughput comes from
experiments.bench_train's `bench_mesh`. Writes benchmarks/results/moe_ep_cpu.json (temp file,
then rename).
"""
import json
import os
import tempfile

from absl import app
from absl import flags

from experiments import bench_train
from m1jax import config_overrides
from m1jax.hlo_bytes import DTYPE_BYTES, all_to_all_bytes

_DEFAULT_MESHES = ("one;expert=8;fsdp=2,expert=4;fsdp=4,sequence=2;tensor=2,sequence=4;"
                   "data=2,expert=2,tensor=2;fsdp=2,expert=2,sequence=2;fsdp=8")
_FACTOR = flags.DEFINE_float("capacity_factor", 2.0, "moe_capacity_factor of the padded "
                             "exchange (E/top_k = 4 is exact for 8 experts)")

def analytic_bytes(model, mesh_axes: dict, batch: int, seq_len: int) -> int:
  """Per-device all-to-all bytes of one train step (no remat), from the padded exchange's
  capacity formula; 0 without an expert axis."""
  from m1jax.layers.moe_ep import capacity
  ep = mesh_axes.get("expert", 1)
  if ep == 1:
    return 0
  # Tokens are split over the batch axes (data, fsdp, expert) and the sequence axis.
  batch_shards = mesh_axes.get("data", 1) * mesh_axes.get("fsdp", 1) * ep
  tokens = (batch // batch_shards) * (seq_len // mesh_axes.get("sequence", 1))
  E, M = model.num_local_experts, model.hidden_size
  cap = capacity(tokens, model.num_experts_per_tok, E, model.moe_capacity_factor)
  width = DTYPE_BYTES["bf16" if model.dtype == "bfloat16" else "f32"]
  return 4 * model.num_hidden_layers * E * cap * M * width


def _axes(spec: str) -> dict:
  if spec == "one":
    return {}
  return {k: int(v) for k, v in (part.split("=") for part in spec.split(","))}


def main(argv):
  del argv
  import jax
  config = bench_train._CONFIG.value
  m = config.model
  m.num_local_experts = 8
  m.moe_all_to_all = "padded"
  m.moe_capacity_factor = _FACTOR.value
  m.scan_layers = False
  t = config.train
  specs = [s.strip() for s in (bench_train._MESHES.value or _DEFAULT_MESHES).split(";")
           if s.strip()]
  runs = []
  for spec in specs:
    run = bench_train.bench_mesh(config, spec, bench_train._STEPS.value,
                                 bench_train._WARMUP.value, hlo=True)
    hlo = run.pop("hlo")
    run["all_to_all_ops"], run["all_to_all_bytes_per_device"] = all_to_all_bytes(hlo)
    run["exchange_ops"], run["exchange_bytes_per_device"] = all_to_all_bytes(
        hlo, exchange_only=True)
    run["analytic_all_to_all_bytes_per_device"] = analytic_bytes(m, _axes(spec), t.batch_size,
                                                                 t.seq_len)
    runs.append(run)
    print(json.dumps(run), flush=True)
  for run in runs:
    run["tokens_per_s_vs_first"] = round(run["tokens_per_s"] / runs[0]["tokens_per_s"], 3)
  load = os.getloadavg()
  result = {
      "what": "train-step tokens/s per mesh vs one device, and per-device all-to-all bytes "
              "per step: all of the compiled program's, those of the MoE exchange alone, "
              "and the exchange's analytic count",
      "device": f"{jax.device_count()} fake CPU devices on a 2-core CPU host (shared, load "
                f"{load[0]:.1f} at the end)",
      "config": f"{flags.FLAGS['config'].serialize()}, num_local_experts=8, "
                "scan_layers=False, moe_all_to_all=padded, "
                f"moe_capacity_factor={_FACTOR.value}",
      "batch_size": t.batch_size, "seq_len": t.seq_len, "dtype": m.dtype,
      "steps": bench_train._STEPS.value, "runs": runs}
  os.makedirs(bench_train._OUT.value, exist_ok=True)
  path = os.path.join(bench_train._OUT.value, "moe_ep_cpu.json")
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
