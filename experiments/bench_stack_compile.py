"""Compile time of the hybrid stack against its depth: the scan should keep it flat.

  python -m experiments.bench_stack_compile

Lowers and compiles the forward and the forward+backward of the released 7+1 layer pattern
at 8 and 80 layers (small widths; compile time depends on the graph, not the sizes), with
scan_layers on and off (8 layers is a single group, so both settings build the same graph), from abstract params (nothing is allocated). Writes
benchmarks/results/stack_compile_cpu.json.
"""
import json
import os
import platform
import time

from absl import app, flags
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.param_count import abstract_params

_OUT = flags.DEFINE_string("out", "benchmarks/results/stack_compile_cpu.json", "JSON output.")
_DEPTHS = flags.DEFINE_list("depths", ["8", "80"], "Stack depths (multiples of 8).")
_UNROLLED = flags.DEFINE_bool("unrolled", True, "Also time the unrolled stack.")


def _config(depth: int, scan: bool) -> ModelConfig:
  return ModelConfig(
      vocab_size=256, hidden_size=64, num_hidden_layers=depth, num_attention_heads=4,
      num_key_value_heads=2, head_dim=16, intermediate_size=64, num_local_experts=4,
      num_experts_per_tok=2, attn_type_list=([0] * 7 + [1]) * (depth // 8), rotary_dim=8,
      block_size=64, scan_layers=scan)


def _time_compile(fn, *args) -> dict:
  start = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {"lower_s": round(lowered_at - start, 3), "compile_s": round(done - lowered_at, 3)}


def measure(depth: int, scan: bool) -> dict:
  cfg = _config(depth, scan)
  model = MiniMaxM1ForCausalLM(cfg)
  params = abstract_params(cfg)
  ids = jax.ShapeDtypeStruct((2, 256), jnp.int32)

  def forward(p, x):
    return model.apply({"params": p}, x).logits

  def loss(p, x):
    out = model.apply({"params": p}, x)
    return jnp.mean(jax.nn.logsumexp(out.logits, axis=-1)) + out.aux_loss

  return {"depth": depth, "scan_layers": scan, "scanned": cfg.is_scanned,
          "forward": _time_compile(forward, params, ids),
          "forward_backward": _time_compile(jax.grad(loss), params, ids)}


def main(argv):
  del argv
  rows = []
  for depth in map(int, _DEPTHS.value):
    for scan in ([True, False] if _UNROLLED.value else [True]):
      row = measure(depth, scan)
      rows.append(row)
      print(json.dumps(row))
  def total(r, kind):
    return r[kind]["lower_s"] + r[kind]["compile_s"]
  ratios = {}
  for scan in (True, False):
    by_depth = {r["depth"]: r for r in rows if r["scan_layers"] == scan}
    if 8 in by_depth and 80 in by_depth:
      ratios["scanned" if scan else "unrolled"] = {
          kind: round(total(by_depth[80], kind) / total(by_depth[8], kind), 2)
          for kind in ("forward", "forward_backward")}
  result = {"benchmark": "stack_compile", "device": jax.devices()[0].device_kind,
            "platform": jax.default_backend(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "jax": jax.__version__,
            "ratio_80_over_8_layers": ratios, "rows": rows}
  print("ratio (80 layers / 8 layers) of lower+compile time:", json.dumps(ratios))
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  tmp = _OUT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, _OUT.value)


if __name__ == "__main__":
  app.run(main)
