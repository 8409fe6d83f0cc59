"""Sequence parallelism on 8 fake CPU devices: train-step tokens/s under `sequence` meshes
against one device, and the bytes LASP-2 and the softmax K/V all-gather move per layer, read
from the compiled HLO and set against the analytic count.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
      python -m experiments.bench_sequence_parallel [--config=configs/tiny.py] [--steps=10]

Throughput: experiments.bench_train's `bench_mesh` for each of `--meshes`. Bytes: the
forward and backward of one lightning layer's operator (`lightning_attention_sp`) and one
softmax layer's attention (`attend`) at the release widths (H=64, D=128, 8 KV heads, bf16
activations), one row of `--tokens` tokens per batch shard, compiled for each `sequence`
size; every all-gather / reduce-scatter in the compiled text is listed with its bytes. The
analytic LASP-2 figure is [B,H,D,D]·4·(P-1) received per device per layer (B the rows per
device). `--tpu_topology` (default v5p:2x2x1; needs libtpu, TPU_SKIP_MDS_QUERY=1) compiles the
same layers for TPU with the Mosaic kernel per shard. Writes
benchmarks/results/sequence_parallel_cpu.json (temp file, then rename).
"""
import json
import math
import os
import re
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import bench_train
from m1jax import config_overrides

# The throughput flags (--config, --steps, --warmup, --meshes, --out) are bench_train's:
# importing it defines them, and its bench_mesh does the timing.
_DEFAULT_MESHES = "one;fsdp=4,sequence=2;data=2,sequence=4"
_SHARDS = flags.DEFINE_string("shards", "2,4,8", "sequence sizes for the byte counts")
_TOKENS = flags.DEFINE_integer("tokens", 8192, "tokens per row for the byte counts")
_TPU = flags.DEFINE_string("tpu_topology", "v5p:2x2x1",
                           "also compile the layers for this TPU topology (libtpu, no TPU "
                           "attached) with sequence = its device count and the TPU kernel; "
                           "'' to skip")

_BYTES = {"f32": 4, "bf16": 2, "s32": 4, "pred": 1}
_COLLECTIVE = re.compile(r"= (\w+)\[([\d,]*)\][^ ]* (all-gather|reduce-scatter|all-reduce)\(")
# XLA:TPU emits a reduce-scatter as a fusion calling %all-reduce-scatter (an all-reduce
# inside it is that fusion's body, listed too); its result may be a tuple.
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def _collectives(hlo: str) -> list[dict]:
  """Each array all-gather / reduce-scatter / all-reduce of a compiled module: its result
  shape and bytes (the per-device result; a gather over P devices receives (P-1)/P of it)."""
  found = []
  for dtype, dims, op in _COLLECTIVE.findall(hlo):
    shape = [int(d) for d in dims.split(",") if d]
    found.append({"op": op, "dtype": dtype, "shape": shape,
                  "bytes": math.prod(shape) * _BYTES[dtype]})
  for line in hlo.splitlines():
    if "calls=%all-reduce-scatter" in line and " fusion(" in line:
      result = line.split(" fusion(")[0].partition("=")[2]
      for dtype, dims in _SHAPE.findall(result):
        shape = [int(d) for d in dims.split(",") if d]
        found.append({"op": "reduce-scatter (all-reduce-scatter fusion)", "dtype": dtype,
                      "shape": shape, "bytes": math.prod(shape) * _BYTES[dtype]})
  return found


def layer_bytes(shards: int, tokens: int, devices=None, impl: str = "chunked") -> dict:
  """Collectives of one lightning and one softmax layer's attention, forward and backward,
  at release widths on a mesh data=len(devices)/shards, sequence=shards (one row per data
  shard). devices: default the 8 CPU devices; a TPU topology's devices compile for TPU."""
  import jax
  import jax.numpy as jnp
  from m1jax import sharding
  from m1jax.ops import attention_impl
  from m1jax.ops.linear_attention_sp import lightning_attention_sp

  devices = jax.devices() if devices is None else devices
  rows, heads, kv_heads, dim = len(devices) // shards, 64, 8, 128
  mesh = sharding.make_mesh(f"data={rows},sequence={shards}", devices)
  bf16 = jnp.bfloat16
  sds = jax.ShapeDtypeStruct
  q = sds((rows, tokens, heads, dim), bf16)
  kv = sds((rows, tokens, kv_heads, dim), bf16)
  ids = sds((rows, tokens), jnp.int32)
  slope = sds((heads,), jnp.float32)

  def lightning(q, k, v, slope, seg):
    out, _ = lightning_attention_sp(q, k, v, slope, impl=impl, segment_ids=seg,
                                    batch_axes="data")
    return jnp.sum(out.astype(jnp.float32))

  def softmax(q, k, v, pos, seg):
    return jnp.sum(attention_impl.attend("blockwise", q, k, v, pos, pos, seg)
                   .astype(jnp.float32))

  result = {"mesh": sharding.describe(mesh), "rows_per_device": 1,
            "tokens_per_row": tokens, "tokens_per_device": tokens // shards}
  with sharding.use_mesh(mesh):
    for name, fn, args in (("lightning", lightning, (q, q, q, slope, ids)),
                           ("softmax", softmax, (q, kv, kv, ids, ids))):
      fwd = jax.jit(fn).lower(*args).compile().as_text()
      grad = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(*args).compile().as_text()
      result[name] = {"forward": _collectives(fwd), "forward_and_backward": _collectives(grad),
                      # Pallas Mosaic kernels in the compiled program (TPU only).
                      "mosaic_calls_forward_and_backward":
                          grad.count('custom_call_target="tpu_custom_call"')}
  state = heads * dim * dim * 4  # one row's fp32 [H,D,D] state
  gathered = [c for c in result["lightning"]["forward"]
              if c["op"] == "all-gather" and c["dtype"] == "f32"]
  result["lasp2_state_gather"] = {
      "hlo_result_bytes": sum(c["bytes"] for c in gathered),
      "hlo_received_bytes_per_device": sum(c["bytes"] for c in gathered) * (shards - 1)
      // shards,
      "analytic_received_bytes_per_device": state * (shards - 1)}
  kv_elements = tokens * kv_heads * dim  # K (or V) of one row
  # K and V gathers: [rows/device, T, K, D]. XLA:CPU moves them as f32 (the bf16 -> f32
  # convert is hoisted above the collective), so bytes are reported as compiled and the
  # analytic count is given for bf16 (what the model sends) and for the compiled dtype.
  kv_gathered = [c for c in result["softmax"]["forward"]
                 if c["op"] == "all-gather" and c["shape"][-2:] == [kv_heads, dim]]
  compiled_width = _BYTES[kv_gathered[0]["dtype"]] if kv_gathered else 0
  result["softmax_kv_gather"] = {
      "hlo_gathers": len(kv_gathered),
      "hlo_dtype": kv_gathered[0]["dtype"] if kv_gathered else None,
      "hlo_received_bytes_per_device": sum(c["bytes"] for c in kv_gathered) * (shards - 1)
      // shards,
      "analytic_received_bytes_per_device_bf16": 2 * kv_elements * 2 * (shards - 1) // shards,
      "analytic_received_bytes_per_device_as_compiled":
          2 * kv_elements * compiled_width * (shards - 1) // shards}
  return result


def main(argv):
  del argv
  import jax
  config = bench_train._CONFIG.value
  steps = bench_train._STEPS.value
  runs = []  # --meshes=none skips the throughput runs
  meshes = bench_train._MESHES.value or _DEFAULT_MESHES
  for spec in (s.strip() for s in meshes.split(";") if meshes != "none"):
    runs.append(bench_train.bench_mesh(config, spec, steps, bench_train._WARMUP.value))
    print(json.dumps(runs[-1]), flush=True)
  for run in runs:
    run["tokens_per_s_vs_first"] = round(run["tokens_per_s"] / runs[0]["tokens_per_s"], 3)
  layers = []
  for shards in (int(s) for s in _SHARDS.value.split(",")):
    layers.append(layer_bytes(shards, _TOKENS.value))
    print(json.dumps({k: layers[-1][k] for k in ("mesh", "lasp2_state_gather",
                                                 "softmax_kv_gather")}), flush=True)
  tpu = None
  if _TPU.value:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU VM metadata server here
    from jax.experimental import topologies
    tpu_devices = list(topologies.get_topology_desc(platform="tpu",
                                                    topology_name=_TPU.value).devices)
    tpu = layer_bytes(len(tpu_devices), _TOKENS.value, tpu_devices, impl="auto")
    tpu["topology"] = _TPU.value
    print(json.dumps({k: tpu[k] for k in ("topology", "mesh", "lasp2_state_gather",
                                          "softmax_kv_gather")}), flush=True)
  load = os.getloadavg()[0]
  result = {"device": f"2-core CPU (shared, load {load:.1f}), "
                      f"{jax.device_count()} fake devices",
            "config": os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"])),
            "batch_size": config.train.batch_size, "seq_len": config.train.seq_len,
            "steps": steps, "train_runs": runs, "layer_collectives": layers,
            "tpu_aot_layer_collectives": tpu}
  out_dir = bench_train._OUT.value
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "sequence_parallel_cpu.json")
  with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".tmp") as f:
    json.dump(result, f, indent=1)
  os.replace(f.name, path)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
