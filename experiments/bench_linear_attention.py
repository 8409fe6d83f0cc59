"""CPU scaling of the three lightning-attention implementations against sequence length.

  python -m experiments.bench_linear_attention
  python -m experiments.bench_linear_attention --seq_lens=512,1024 --repeats=3  # quick look

For impl in naive / recurrent / chunked and for the forward and the forward+backward, jit and
compile once, then time the median of --repeats runs (each ended by block_until_ready) at
B=1, H=2, D=64, block 256, T = 512 ... 16384. Per T it records the time, the ratio
time(T) / time(T/2) (about 2 for linear cost, 4 for quadratic) and chunked/naive and
chunked/recurrent, and a fitted exponent p in time ~ T^p.
--impls may add pallas_tpu (pallas_kernels/lightning_tpu.py); on CPU it runs in TPU interpret
mode, so its times are interpreter cost (correctness only), never kernel speed:
  python -m experiments.bench_linear_attention --impls=chunked,pallas_tpu \
      --seq_lens=512,1024,2048 --out=benchmarks/results/linear_attention_pallas_interpret_cpu.json naive holds B*H*T^2 float32 score matrices, so it is skipped above
--max_naive_t and the reason recorded. Writes benchmarks/results/linear_attention_cpu.json.

GPU contenders (issue 4; needs JAX_PLATFORMS=cuda, which overrides the CPU default below):
  pallas_gpu  pallas_kernels/lightning_gpu.py through impl="pallas_gpu";
  chunked     the XLA chunked reference;
  pallas_triton  pallas_kernels/lightning_triton.py through impl="pallas_triton";
  jla         jax-linear-attention's simple_gla (Mosaic GPU, g = -slope per token, scale 1),
              imported only when listed;
  cudnn       jax.nn.dot_product_attention(implementation="cudnn", is_causal=True);
  fla         flash-linear-attention's chunk_simple_gla(g_gamma=-slope, scale=1) in PyTorch,
              imported only when listed (pip install flash-linear-attention beside torch).
--heads_sweep runs every point for each H. Each point also gets TFLOP/s (`_flops`) and,
when fla ran at the same (H, mode, T), ratio_to_fla = time / time(fla).
"""
import os

# The numbers are meant to be CPU numbers even on a machine with an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# torch (fla) may share the GPU: JAX must not take 75 % of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from m1jax.ops import lightning_attention  # noqa: E402

_OUT = flags.DEFINE_string("out", "benchmarks/results/linear_attention_cpu.json", "JSON output.")
_SEQ_LENS = flags.DEFINE_list("seq_lens", [str(512 * 2**i) for i in range(6)],
                              "Sequence lengths T; doubling steps give the scaling ratios.")
_IMPLS = flags.DEFINE_list("impls", ["naive", "recurrent", "chunked"], "Implementations.")
_MODES = flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "fwd and/or fwd_bwd.")
_MAX_NAIVE_T = flags.DEFINE_integer("max_naive_t", 8192,
                                    "Skip naive above this T (its T^2 matrices exhaust memory).")
_BATCH = flags.DEFINE_integer("batch", 1, "B.")
_HEADS = flags.DEFINE_integer("heads", 2, "H.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "D.")
_BLOCK = flags.DEFINE_integer("block_size", 256, "Chunked block length C.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "q/k/v dtype.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed runs per point (median reported).")
_BLOCK_OVERRIDES = flags.DEFINE_list(
    "impl_block_sizes", [], "Per-impl chunk overriding --block_size, e.g. pallas_gpu:64 (the "
    "Mosaic GPU kernel's shared memory is sized for C=64).")
_KEEP_GOING = flags.DEFINE_bool(
    "keep_going", False, "Record a point's exception and go on (GPU runs: one kernel that has "
    "never run must not cost the other contenders' figures).")
_HEADS_SWEEP = flags.DEFINE_list("heads_sweep", [], "If set, every H to run (overrides --heads).")

# Contenders that are not `lightning_attention` impls.
_EXTERNAL = ("cudnn", "fla")


def _jla_forward(q, k, v, slope, state):
  """jax-linear-attention's simple_gla: the same recurrence with log-decay g = -slope."""
  from jla.ops import linear_attention as jla_op  # pylint: disable=g-import-not-at-top
  b, t, h, _ = q.shape
  g_BTH = jnp.broadcast_to(-slope, (b, t, h)).astype(jnp.float32)
  return jla_op("simple_gla", q, k, v, g=g_BTH, impl="mosaic_gpu", scale=1.0,
                initial_state=state, output_final_state=True)


def _make_fn(impl: str, mode: str, block_size: int):
  """A jitted fwd (out, state) or fwd+bwd (grads of q, k, v, initial_state) function."""
  if impl == "cudnn":
    return _make_cudnn_fn(mode)

  def forward(q, k, v, slope, state):
    if impl == "jla":
      return _jla_forward(q, k, v, slope, state)
    return lightning_attention(q, k, v, slope, initial_state=state, impl=impl,
                               block_size=block_size)

  if mode == "fwd":
    return jax.jit(forward)

  def loss(q, k, v, slope, state):
    out, final = forward(q, k, v, slope, state)
    # Both outputs feed the loss so the backward covers the state path too.
    return jnp.sum(out.astype(jnp.float32)) + jnp.sum(final)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 4)))


def _make_cudnn_fn(mode: str):
  """Causal softmax flash attention (cuDNN) on the same [B,T,H,D] q, k, v."""

  def forward(q, k, v, slope, state):
    del slope, state
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="cudnn")

  if mode == "fwd":
    return jax.jit(forward)

  def loss(q, k, v, slope, state):
    return jnp.sum(forward(q, k, v, slope, state).astype(jnp.float32))

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _measure_fla(mode: str, args) -> dict:
  """fla's chunk_simple_gla (Triton) timed with CUDA events; imported only when requested."""
  import torch  # pylint: disable=g-import-not-at-top
  from fla.ops.simple_gla import chunk_simple_gla  # pylint: disable=g-import-not-at-top

  q, k, v, slope, _ = (torch.from_numpy(np.asarray(x.astype(jnp.float32))).cuda() for x in args)
  dtype = torch.bfloat16 if _DTYPE.value == "bfloat16" else torch.float32
  q, k, v = (x.to(dtype).requires_grad_(mode == "fwd_bwd") for x in (q, k, v))
  g_gamma = -slope  # log-decay per head: decay exp(-slope)

  def run():
    out, final = chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=1.0, output_final_state=True)
    if mode == "fwd_bwd":
      (out.float().sum() + final.float().sum()).backward()

  run()
  torch.cuda.synchronize()
  times = []
  for _ in range(_REPEATS.value):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
  return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
          "fla_version": getattr(__import__("fla"), "__version__", None)}


def _flops(impl: str, mode: str, t: int, h: int) -> float:
  """Nominal FLOPs of one call. Linear contenders (chunk C = --block_size): per token
  4CD + 4D^2 forward and 12CD + 10D^2 backward (lightning_tpu.py's matmul counts). cudnn:
  causal softmax attention, 2 T^2 D forward and 2.5x that backward (per (b, h))."""
  b, d, c = _BATCH.value, _HEAD_DIM.value, _BLOCK.value
  if impl == "cudnn":
    fwd = 2.0 * t * t * d
    return b * h * (fwd if mode == "fwd" else 3.5 * fwd)
  fwd = t * (4.0 * c * d + 4.0 * d * d)
  bwd = t * (12.0 * c * d + 10.0 * d * d)
  return b * h * (fwd if mode == "fwd" else fwd + bwd)


def _inputs(t: int, h: int = 0):
  b, h, d = _BATCH.value, h or _HEADS.value, _HEAD_DIM.value
  rng = np.random.default_rng(0)
  # Small values keep the undecayed (slope ~ 0) sums far from overflow at T = 16k.
  q, k, v = (jnp.asarray(0.1 * rng.standard_normal((b, t, h, d)), _DTYPE.value)
             for _ in range(3))
  slope = jnp.asarray(np.geomspace(1e-3, 1.0, h), jnp.float32)
  state = jnp.zeros((b, h, d, d), jnp.float32)
  return q, k, v, slope, state


def _naive_gib(t: int) -> float:
  """Rough size of one B*H*T*T float32 matrix, in GiB (fwd+bwd keeps several)."""
  return _BATCH.value * _HEADS.value * t * t * 4 / 2**30


def _block_size(impl: str) -> int:
  """--impl_block_sizes entry for `impl`, else --block_size."""
  for item in _BLOCK_OVERRIDES.value:
    name, sep, size = item.partition(":")
    if not sep or not size.isdigit():
      raise ValueError(f"--impl_block_sizes entry {item!r}: expected impl:chunk, e.g. "
                       "pallas_gpu:64")
    if name == impl:
      return int(size)
  return _BLOCK.value


def measure_or_record(impl: str, mode: str, t: int, h: int = 0) -> dict:
  """measure(), or with --keep_going the point with the exception that stopped it."""
  if not _KEEP_GOING.value:
    return measure(impl, mode, t, h)
  try:
    return measure(impl, mode, t, h)
  except Exception as e:  # pylint: disable=broad-except
    return {"impl": impl, "mode": mode, "T": t, "H": h or _HEADS.value,
            "skipped": f"error: {type(e).__name__}: {str(e)[:400]}"}


def measure(impl: str, mode: str, t: int, h: int = 0) -> dict:
  """Compiles once, warms up once, then times --repeats runs."""
  point = {"impl": impl, "mode": mode, "T": t, "H": h or _HEADS.value}
  if impl == "naive" and t > _MAX_NAIVE_T.value:
    point["skipped"] = (f"T > --max_naive_t={_MAX_NAIVE_T.value}: each B*H*T^2 float32 "
                        f"matrix is {_naive_gib(t):.1f} GiB and fwd+bwd keeps several")
    return point
  args = _inputs(t, h)
  if impl == "fla":
    point.update(_measure_fla(mode, args))
    point["tflops"] = _flops(impl, mode, t, point["H"]) / point["median_s"] / 1e12
    return point
  start = time.perf_counter()
  compiled = _make_fn(impl, mode, _block_size(impl)).lower(*args).compile()
  point["compile_s"] = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  point.update(median_s=statistics.median(times), min_s=min(times), times_s=times)
  point["tflops"] = _flops(impl, mode, t, point["H"]) / point["median_s"] / 1e12
  return point


def _add_fla_ratios(points: list[dict]) -> None:
  fla = {(p["H"], p["mode"], p["T"]): p.get("median_s") for p in points if p["impl"] == "fla"}
  for p in points:
    ref = fla.get((p["H"], p["mode"], p["T"]))
    if ref and p.get("median_s"):
      p["ratio_to_fla"] = p["median_s"] / ref


def _add_ratios(points: list[dict]) -> list[dict]:
  """Adds ratio_vs_half_T to each point and returns per-(mode, T) cross-impl ratios."""
  median = {(p["impl"], p["mode"], p["T"]): p.get("median_s") for p in points
            if p["H"] == points[0]["H"]}
  for p in points:
    half = median.get((p["impl"], p["mode"], p["T"] // 2))
    if p.get("median_s") and half:
      p["ratio_vs_half_T"] = p["median_s"] / half
  cross = []
  for mode in _MODES.value:
    for t in sorted({p["T"] for p in points}):
      row = {"mode": mode, "T": t}
      chunked = median.get(("chunked", mode, t))
      for other in ("naive", "recurrent"):
        other_s = median.get((other, mode, t))
        row[f"chunked_over_{other}"] = chunked / other_s if chunked and other_s else None
      cross.append(row)
  return cross


def _scaling_exponents(points: list[dict]) -> list[dict]:
  """Least-squares p in time ~ T^p per (impl, mode): ~1 linear, ~2 quadratic.

  One fit over all T is steadier than the single doubling ratios on a busy host.
  """
  fits = []
  for mode in _MODES.value:
    for impl in _IMPLS.value:
      pts = [p for p in points if p["impl"] == impl and p["mode"] == mode and "median_s" in p]
      if len(pts) >= 2:
        log_t = np.log([p["T"] for p in pts])
        log_s = np.log([p["median_s"] for p in pts])
        fits.append({"impl": impl, "mode": mode, "T_range": [pts[0]["T"], pts[-1]["T"]],
                     "exponent": float(np.polyfit(log_t, log_s, 1)[0])})
  return fits


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def _print_table(points: list[dict], cross: list[dict], fits: list[dict]) -> None:
  by_key = {(p["impl"], p["mode"], p["T"]): p for p in points}
  impls = [i for i in ("naive", "recurrent", "chunked", "pallas_tpu", "pallas_gpu",
                       "pallas_triton", "jla", *_EXTERNAL)
           if i in _IMPLS.value]
  for mode in _MODES.value:
    print(f"\n{mode}: median ms (x time(T)/time(T/2))")
    header = f"{'T':>6} " + " ".join(f"{i:>20}" for i in impls)
    print(header + f" {'chunk/naive':>12} {'chunk/recur':>12}")
    for row in (r for r in cross if r["mode"] == mode):
      cells = []
      for impl in impls:
        p = by_key.get((impl, mode, row["T"]), {})
        ms = p.get("median_s") and 1e3 * p["median_s"]
        cells.append(f"{_fmt(ms, '.2f'):>11} (x{_fmt(p.get('ratio_vs_half_T'), '.2f'):>5})"
                     if ms else f"{'skipped' if 'skipped' in p else '-':>20}")
      print(f"{row['T']:>6} " + " ".join(f"{c:>20}" for c in cells)
            + f" {_fmt(row['chunked_over_naive'], '.3f'):>12}"
            + f" {_fmt(row['chunked_over_recurrent'], '.3f'):>12}")
    print("fitted p in time ~ T^p: " + ", ".join(
        f"{f['impl']} {f['exponent']:.2f}" for f in fits if f["mode"] == mode))


def _write_json(path: str, payload: dict) -> None:
  """Writes to a temp file in the target folder, then renames: no half-written results."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  os.replace(f.name, path)


def _payload(points, heads, seq_lens, load_at_start, start) -> tuple[dict, list, list]:
  """The JSON record of the points so far, and the cross-impl ratios and fits it holds."""
  _add_fla_ratios(points)
  cross = _add_ratios(points)
  fits = _scaling_exponents(points)
  device = jax.devices()[0]
  payload = {
      "benchmark": "lightning_attention scaling vs T",
      "command": "python -m experiments.bench_linear_attention",
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "gpu_name": device.device_kind if device.platform == "gpu" else None,
      "device": {"device_kind": device.device_kind, "platform": device.platform,
                 "cpu_count": os.cpu_count(),
                 "load_avg_1m": {"start": load_at_start, "end": os.getloadavg()[0]}},
      "jax_version": jax.__version__,
      "config": {"B": _BATCH.value, "H": heads, "D": _HEAD_DIM.value,
                 "block_size": _BLOCK.value, "dtype": _DTYPE.value, "seq_lens": seq_lens,
                 "impls": _IMPLS.value, "modes": _MODES.value,
                 "max_naive_t": _MAX_NAIVE_T.value, "repeats": _REPEATS.value,
                 "slopes": "geomspace(1e-3, 1, H)"},
      "notes": ("median_s is the median of `repeats` timed runs after one warm-up; "
                "ratio_vs_half_T = median_s(T) / median_s(T/2): ~2 linear, ~4 quadratic. "
                "fwd_bwd is jax.grad of sum(out) + sum(final_state) w.r.t. q, k, v, "
                "initial_state."),
      "pallas_tpu_timing": ("TPU interpret mode on CPU: interpreter cost, not kernel speed"
                            if "pallas_tpu" in _IMPLS.value and device.platform != "tpu"
                            else None),
      "total_wall_s": time.perf_counter() - start,
      "results": points,
      "cross_ratios": cross,
      "scaling_exponents": fits,
  }
  payload["complete"] = len(points) == len(heads) * len(_MODES.value) * len(_IMPLS.value) * len(
      seq_lens)
  return payload, cross, fits


def main(argv):
  del argv
  seq_lens = sorted(int(t) for t in _SEQ_LENS.value)
  # Other jobs on a shared host inflate and scatter the timings; record how busy it was.
  load_at_start = os.getloadavg()[0]
  start = time.perf_counter()
  points = []
  heads = [int(h) for h in _HEADS_SWEEP.value] or [_HEADS.value]
  for h in heads:
    for mode in _MODES.value:
      for impl in _IMPLS.value:
        for t in seq_lens:
          point = measure_or_record(impl, mode, t, h)
          points.append(point)
          print(f"{impl:>10} {mode:>7} H={h:>3} T={t:>6}: "
                + (point["skipped"] if "skipped" in point
                   else f"{1e3 * point['median_s']:.2f} ms {point['tflops']:.1f} TFLOP/s"),
                flush=True)
          # Written after every point: a run cut by its time limit keeps what it measured.
          _write_json(_OUT.value, _payload(points, heads, seq_lens, load_at_start, start)[0])
  payload, cross, fits = _payload(points, heads, seq_lens, load_at_start, start)
  _write_json(_OUT.value, payload)
  _print_table(points, cross, fits)
  print(f"\nwrote {_OUT.value} ({payload['total_wall_s']:.0f} s)")


if __name__ == "__main__":
  app.run(main)
