"""CPU timing of the MoE grouped-matmul paths (issue 16): which exact path `moe_impl="auto"`
should pick on CPU.

  python -m experiments.bench_moe
  python -m experiments.bench_moe --shapes=issue --repeats=2     # quick

Two levels, each forward ("fwd") and forward+backward ("fwd_bwd": all input gradients):
  * "grouped": one grouped matmul x[A, M] x w[E, M, F] at A = N*top_k sorted rows:
    jax.lax.ragged_dot, the chunked path at several chunk lengths C (C = N is the
    "capacity = worst case" layout: every expert padded to N rows), and the dense matmul
    x[A, M] x [M, F] of the same FLOPs (the floor);
  * "moe": the whole SwiGLU dispatch (m1jax.layers.moe: sort, three grouped matmuls,
    unsort, combine) per moe_impl, against "dense" (every expert on every token).
Shapes: "issue" (N 8192, M 256, F 256, E 8, top-2: the issue's measurement) and "tiny"
(configs/tiny.py's MoE: M 64, F 128, E 8, top-2, N = 8 x 64 tokens). Float32, one process,
median of >= --repeats runs (and >= 1 s of runs) after a warm-up; the ratios are path time /
dense time from this one run.
Writes benchmarks/results/moe_cpu.json.
"""
import os

# The numbers are meant to be CPU numbers even on a machine with an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from m1jax.hf.outputs import write_json  # noqa: E402
from m1jax.layers import moe  # noqa: E402
from m1jax.ops.grouped_matmul_chunked import chunk_size, grouped_matmul_chunked  # noqa: E402

SHAPES = {"issue": dict(N=8192, M=256, F=256, E=8, R=2),
          "tiny": dict(N=512, M=64, F=128, E=8, R=2)}
_OUT = flags.DEFINE_string("out", "benchmarks/results/moe_cpu.json", "JSON output.")
_SHAPES = flags.DEFINE_list("shapes", list(SHAPES), f"Shapes, of {list(SHAPES)}.")
_CHUNKS = flags.DEFINE_list("chunks", ["64", "128", "256", "512"],
                            "Chunk lengths C for the grouped-level chunked path.")
_MOE_IMPLS = flags.DEFINE_list("moe_impls", ["ragged", "chunked", "dense"],
                               "moe_impl values timed at the MoE level.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per point (median reported).")
MIN_SECONDS = 1.0


def _median_seconds(fn, args, repeats: int) -> float:
  """Median over at least `repeats` runs and MIN_SECONDS of timing: a sub-millisecond tiny
  shape gets hundreds of runs, so one preempted run on the shared CPU cannot decide it."""
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  while len(times) < repeats or (sum(times) < MIN_SECONDS and len(times) < 1000):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _timed(f, args, mode, repeats):
  """f(*args) -> array; fwd_bwd takes the gradient of sum(out * ct) w.r.t. the float args."""
  if mode == "fwd":
    return _median_seconds(jax.jit(f), args, repeats)
  out = jax.eval_shape(f, *args)
  ct = jnp.asarray(np.random.default_rng(1).standard_normal(out.shape), out.dtype)
  float_args = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=float_args))
  return _median_seconds(grad, args, repeats)


def _routing(rng, N, E, R):
  experts_NR = np.stack([rng.permutation(E)[:R] for _ in range(N)]).astype(np.int32)
  weights_NR = rng.uniform(0.1, 1.0, (N, R))
  weights_NR /= weights_NR.sum(-1, keepdims=True)
  return jnp.asarray(weights_NR, jnp.float32), jnp.asarray(experts_NR)


def _grouped_points(shape, repeats):
  N, M, F, E, R = (shape[k] for k in "NMFER")
  rng = np.random.default_rng(0)
  _, experts_NR = _routing(rng, N, E, R)
  A = N * R
  sizes_E = jnp.bincount(experts_NR.reshape(-1), length=E).astype(jnp.int32)
  x_AM = jnp.asarray(rng.standard_normal((A, M)), jnp.float32)
  w_EMF = jnp.asarray(rng.standard_normal((E, M, F)) / np.sqrt(M), jnp.float32)
  paths = {"dense_same_flops": (lambda x, w, s: x @ w[0], (x_AM, w_EMF, sizes_E)),
           "ragged_dot": (jax.lax.ragged_dot, (x_AM, w_EMF, sizes_E))}
  chunks = sorted({int(c) for c in _CHUNKS.value} | {N, chunk_size(A, E)})
  for c in chunks:
    paths[f"chunked_C{c}"] = ((lambda c: lambda x, w, s: grouped_matmul_chunked(x, w, s, c))(c),
                              (x_AM, w_EMF, sizes_E))
  points = []
  for mode in ("fwd", "fwd_bwd"):
    seconds = {name: _timed(f, args, mode, repeats) for name, (f, args) in paths.items()}
    point = {"level": "grouped", "mode": mode, "A": A, "seconds": seconds,
             "default_chunk": chunk_size(A, E), "capacity_chunk": N,
             "ratio_to_dense_same_flops": {k: v / seconds["dense_same_flops"]
                                           for k, v in seconds.items()},
             "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(point), flush=True)
    points.append(point)
  return points


def _moe_points(shape, repeats):
  N, M, F, E, R = (shape[k] for k in "NMFER")
  rng = np.random.default_rng(2)
  weights_NR, experts_NR = _routing(rng, N, E, R)
  x_NM = jnp.asarray(rng.standard_normal((N, M)), jnp.float32)
  ws = [jnp.asarray(rng.standard_normal(s) / np.sqrt(s[1]), jnp.float32)
        for s in ((E, M, F), (E, M, F), (E, F, M))]
  args = (x_NM, *ws, weights_NR, experts_NR)
  points = []
  for mode in ("fwd", "fwd_bwd"):
    seconds = {impl: _timed((lambda impl: lambda *a: moe.swiglu(impl, *a))(impl), args, mode,
                            repeats) for impl in _MOE_IMPLS.value}
    point = {"level": "moe", "mode": mode, "seconds": seconds,
             "ratio_to_dense": {k: v / seconds["dense"] for k, v in seconds.items()}
             if "dense" in seconds else {},
             "load_avg_1m": os.getloadavg()[0]}
    print(json.dumps(point), flush=True)
    points.append(point)
  return points


def main(argv):
  del argv
  load_start = os.getloadavg()
  results = {}
  for name in _SHAPES.value:
    if name not in SHAPES:
      raise ValueError(f"--shapes: unknown {name!r}; expected some of {list(SHAPES)}")
    shape = SHAPES[name]
    print(name, shape, flush=True)
    results[name] = {"shape": shape, "points": _grouped_points(shape, _REPEATS.value)
                     + _moe_points(shape, _REPEATS.value)}
  load_end = os.getloadavg()
  write_json(_OUT.value, {
      "benchmark": "MoE grouped matmul paths on CPU: ragged_dot vs chunked vs dense",
      "command": "python -m experiments.bench_moe " + " ".join(
          f"--{f.name}={f.value if not isinstance(f.value, list) else ','.join(f.value)}"
          for f in (_SHAPES, _CHUNKS, _MOE_IMPLS, _REPEATS)),
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": f"{os.cpu_count()}-core CPU (shared, load {load_start[0]:.1f} at start, "
                f"{load_end[0]:.1f} at end)",
      "load_avg_1_5_15min": {"start": list(load_start), "end": list(load_end)},
      "jax_version": jax.__version__, "dtype": "float32",
      "results": results})


if __name__ == "__main__":
  app.run(main)
