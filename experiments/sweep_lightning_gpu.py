"""Times the Pallas-Triton lightning kernel's forward and backward per block config.

  JAX_PLATFORMS=cuda python -m experiments.sweep_lightning_gpu --out=$OUT/sweep.json
  python -m experiments.sweep_lightning_gpu --interpret --shape=1,64,2,64 --max_configs=1  # CPU

Configs: experiments/aot_lightning_gpu.SWEEP_CONFIGS (the candidates that compiled for an
H100 on CPU). Per config: jit forward and forward+backward, one warm-up call (compile), then
the median of --repeats timed calls ended by block_until_ready. A config that raises becomes
an `error` row. The JSON ({device, jax, shape_BTHD, rows, best}) is rewritten after every
config, so a timeout keeps the rows so far. Interpret-mode times are interpreter cost only.
"""
import argparse
import datetime
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.aot_lightning_gpu import SWEEP_CONFIGS
from pallas_kernels.lightning_triton_ops import lightning_attention_triton


def _median_s(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--shape", default="4,8192,16,128", help="B,T,H,D")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--interpret", action="store_true")
  parser.add_argument("--max_configs", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results/sweep_lightning_gpu.json")
  args = parser.parse_args()
  b, t, h, d = (int(x) for x in args.shape.split(","))
  rng = np.random.default_rng(0)
  q, k, v, d_out = (jnp.asarray(rng.standard_normal((b, t, h, d)), jnp.bfloat16)
                    for _ in range(4))
  slope = jnp.linspace(0.01, 1.0, h, dtype=jnp.float32)
  d_state = jnp.asarray(rng.standard_normal((b, h, d, d)) * 0.01, jnp.float32)
  configs = SWEEP_CONFIGS[:args.max_configs] if args.max_configs else SWEEP_CONFIGS
  device = jax.devices()[0]
  result = {"device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "interpret": args.interpret, "shape_BTHD": [b, t, h, d], "dtype": "bfloat16",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": [], "best": None}
  for bs in configs:
    row = dict(chunk=bs.chunk, split=bs.split, num_warps=bs.num_warps,
               num_stages=bs.num_stages)

    def fwd(q, k, v, slope, bs=bs):
      return lightning_attention_triton(q, k, v, slope, block_sizes=bs,
                                        interpret=True if args.interpret else None)

    def fwd_bwd(q, k, v, slope, d_out, d_state):
      _, pullback = jax.vjp(fwd, q, k, v, slope)
      return pullback((d_out, d_state))

    try:
      row["fwd_s"] = _median_s(jax.jit(fwd), (q, k, v, slope), args.repeats)
      row["fwd_bwd_s"] = _median_s(jax.jit(fwd_bwd), (q, k, v, slope, d_out, d_state),
                                   args.repeats)
      row["bwd_s"] = row["fwd_bwd_s"] - row["fwd_s"]
    except Exception as e:  # noqa: BLE001 - a failing config is a result
      row["error"] = f"{type(e).__name__}: {e}"[:300]
    result["rows"].append(row)
    ok = [r for r in result["rows"] if "fwd_bwd_s" in r]
    result["best"] = min(ok, key=lambda r: r["fwd_bwd_s"]) if ok else None
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
