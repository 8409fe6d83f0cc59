"""Peak memory of the streaming HF conversion, measured (results:
benchmarks/results/hf_convert_memory_cpu.json).

  JAX_PLATFORMS=cpu python -m experiments.bench_hf_convert_memory --runs=8x1536,16x1536,8x1024

For each run (depth x width, width = hidden_size = expert intermediate_size): writes a synthetic checkpoint with the release's key layout
(experiments/make_synthetic_hf.py) under --tmp, then runs `experiments.convert_hf` and
`experiments.export_hf` on it as child processes and reads each child's peak RSS from the
kernel (os.wait4's ru_maxrss). Also measures the RSS of a child that only imports what
those two import (the floor), checks that the export reproduces the source tensors, and
deletes everything it wrote. Target: peak <= 2 x largest per-layer stacked expert tensor
+ 1 GB, whatever the depth.

The synthetic widths keep the release's proportions where memory is concerned: V/(E*F) (the
[V, M] embedding and head against one [E, M, F] expert stack) is 0.667 at V=32768, F=1536
and 0.678 in the release. Two depths at one width show the peak does not depend on depth;
two widths at one depth give the slope used to extrapolate to the release.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from absl import app, flags

_RUNS = flags.DEFINE_list("runs", ["8x1536", "16x1536", "8x1024"],
                          "depth x width of each synthetic checkpoint.")
_TMP = flags.DEFINE_string("tmp", "/tmp/m1jax_hf_memory", "Scratch directory (deleted).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/hf_convert_memory_cpu.json", "Results.")

_EXPERTS = 32  # the synthetic checkpoints keep the release's expert count
_RELEASE_STACKED = 32 * 6144 * 9216 * 2  # one layer's w1 (or w3, w2), bf16
_RELEASE_BYTES = 912_210_767_872


def _run(args: list[str]) -> dict:
  """Runs `python -m args...` and returns its wall time and peak RSS (bytes)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  start = time.perf_counter()
  proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  # wait4, not communicate: the rusage is this child's alone. Pipes are drained after; the
  # commands print little (a progress line rewritten in place).
  _, status, usage = os.wait4(proc.pid, 0)
  out, err = proc.stdout.read(), proc.stderr.read()
  proc.returncode = os.waitstatus_to_exitcode(status)
  if proc.returncode != 0:
    raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {err[-2000:]}")
  return {"seconds": round(time.perf_counter() - start, 1),
          "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout_tail": out.strip()[-200:]}


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(path)
             for n in names)


def _spot_check(source: str, exported: str, keys: list[str]) -> None:
  """The exported tensors equal the source's (bit for bit) for a few keys."""
  import numpy as np
  from m1jax.hf.safetensors_io import inventory, read_tensor
  a, b = inventory(source), inventory(exported)
  assert set(a) == set(b), "exported key set differs"
  for key in keys:
    if not np.array_equal(read_tensor(a[key]).view(np.uint16 if a[key].dtype == "BF16"
                                                    else np.uint32),
                          read_tensor(b[key]).view(np.uint16 if b[key].dtype == "BF16"
                                                   else np.uint32)):
      raise AssertionError(f"{key}: exported tensor differs from the source")


def _extrapolate(results: dict) -> dict:
  """Release peak = intercept + slope x stacked, fitted per step over the measured widths
  (worst step reported); with one width, the measured peak / stacked ratio instead."""
  release = {"largest_stacked_expert_bytes": _RELEASE_STACKED,
             "checkpoint_bytes": _RELEASE_BYTES, "target_bytes": 2 * _RELEASE_STACKED + 2**30}
  worst = 0
  for step in ("convert", "export"):
    points = {}
    for run in results["runs"]:  # the largest peak at each stacked size
      size = run["largest_stacked_expert_bytes"]
      points[size] = max(points.get(size, 0), run[step]["peak_rss_bytes"])
    sizes = sorted(points)
    if len(sizes) >= 2:
      (x0, x1), (y0, y1) = sizes[-2:], (points[sizes[-2]], points[sizes[-1]])
      slope = (y1 - y0) / (x1 - x0)
      predicted = y1 + slope * (_RELEASE_STACKED - x1)
      release[f"{step}_slope_per_stacked_byte"] = round(slope, 3)
    else:
      predicted = points[sizes[0]] / sizes[0] * _RELEASE_STACKED
    release[f"{step}_extrapolated_peak_bytes"] = int(predicted)
    worst = max(worst, predicted)
  release["extrapolated_peak_bytes"] = int(worst)
  release["within_target"] = worst <= release["target_bytes"]
  release["method"] = ("linear in the largest stacked expert tensor, through the two largest "
                       "measured widths (depth does not enter: see the depth pair)")
  return release


def main(argv):
  del argv
  shutil.rmtree(_TMP.value, ignore_errors=True)
  os.makedirs(_TMP.value)
  floor = _run(["experiments.bench_hf_import_floor"])
  results = {"device": f"CPU ({platform.processor() or platform.machine()}), "
                       f"{os.cpu_count()} cores", "floor_rss_bytes": floor["peak_rss_bytes"],
             "runs": []}
  try:
    for spec in _RUNS.value:
      depth, width = map(int, spec.split("x"))
      stacked = _EXPERTS * width * width * 2
      hf, conv, back = (os.path.join(_TMP.value, f"{name}-{spec}")
                        for name in ("hf", "converted", "exported"))
      print(f"depth {depth}: writing the synthetic checkpoint", flush=True)
      make = _run(["experiments.make_synthetic_hf", f"--out={hf}", f"--layers={depth}",
                   f"--hidden={width}", f"--ffn={width}"])
      convert = _run(["experiments.convert_hf", f"--hf_dir={hf}", f"--workdir={conv}"])
      export = _run(["experiments.export_hf", f"--checkpoint_dir={conv}", f"--out={back}",
                     "--max_shard_size=1GB"])
      _spot_check(hf, back, ["model.layers.0.block_sparse_moe.experts.31.w2.weight",
                             f"model.layers.{depth - 1}.self_attn.o_proj.weight",
                             "model.layers.1.block_sparse_moe.gate.weight",
                             "lm_head.weight"])
      run = {"layers": depth, "hidden_size": width, "intermediate_size": width,
             "experts": _EXPERTS, "make": make,
             "checkpoint_bytes": _dir_bytes(hf), "converted_bytes": _dir_bytes(conv),
             "largest_stacked_expert_bytes": stacked,
             "target_bytes": 2 * stacked + 2**30, "convert": convert, "export": export}
      for step in ("convert", "export"):
        peak = run[step]["peak_rss_bytes"]
        run[step]["peak_over_stacked"] = round(peak / stacked, 2)
        run[step]["peak_over_checkpoint"] = round(peak / run["checkpoint_bytes"], 3)
        run[step]["above_floor_over_stacked"] = round(
            (peak - floor["peak_rss_bytes"]) / stacked, 2)
        run[step]["within_target"] = peak <= run["target_bytes"]
      results["runs"].append(run)
      print(json.dumps(run, indent=1), flush=True)
      for path in (hf, conv, back):
        shutil.rmtree(path, ignore_errors=True)
  finally:
    shutil.rmtree(_TMP.value, ignore_errors=True)
  results["release"] = _extrapolate(results)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  tmp = _OUT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  os.replace(tmp, _OUT.value)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
