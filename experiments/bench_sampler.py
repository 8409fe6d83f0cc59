"""CPU benchmark of the sampler: decode cost vs context, prefill time vs T, prefill peak memory.

  python -m experiments.bench_sampler
  python -m experiments.bench_sampler --contexts=1024,8192 --prefill_lens=1024,2048 --quick

Three measurements, all on configs/tiny.py widths (H=4, D=16, 16 layers):
1. Decode ms/token for a lightning-only stack (all 16 layers lightning) and for the hybrid
   tiny config (7+1 x 2) at contexts 1K, 8K, 64K. The cache is built "filled at the right
   length" (index = lengths = context, random states and K/V): one decode step's work depends
   only on the cache's shapes, never on its values, so this times exactly the step a real
   64K-token prefill would leave behind, without spending minutes prefilling. Lightning-only
   must stay flat (ratio 64K/1K <= 1.2); the hybrid's softmax layers read S_max slots.
2. Prefill wall time vs T for the lightning-only stack (segmented, --segment_len): linear.
3. Peak memory of a lightning-only prefill at 64K vs 8K. CPU has no allocator statistics
   that survive XLA's own arenas, so each T runs in a fresh subprocess that records its
   resident set (ru_maxrss) after a warm-up prefill of one segment (compile done, buffers
   allocated) and again after the full prefill; the increase is the prefill's peak growth.
   The compiled segment program's temp bytes (`memory_analysis()`) are recorded beside it.
Writes benchmarks/results/sampler_cpu.json. CPU figures are ratios; absolute ms mean little.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny  # noqa: E402
from m1jax import inference  # noqa: E402
from m1jax.config import ModelConfig  # noqa: E402
from m1jax.model import MiniMaxM1ForCausalLM, init_params  # noqa: E402

_OUT = flags.DEFINE_string("out", "benchmarks/results/sampler_cpu.json", "JSON output.")
_CONTEXTS = flags.DEFINE_list("contexts", ["1024", "8192", "65536"], "Decode contexts.")
_PREFILL_LENS = flags.DEFINE_list("prefill_lens", ["2048", "4096", "8192", "16384"],
                                  "Prefill lengths T (lightning-only).")
_MEMORY_LENS = flags.DEFINE_list("memory_lens", ["8192", "65536"], "Prefill peak-memory T.")
_SEGMENT = flags.DEFINE_integer("segment_len", 2048, "Prefill segment length.")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows decoded together.")
_STEPS = flags.DEFINE_integer("steps", 32, "Decode steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per point (median reported).")
_MEMORY_CHILD = flags.DEFINE_integer("memory_child", 0, "Internal: run one memory probe.")


def _configs() -> dict:
  hybrid = ModelConfig.from_dict(tiny.get_config().model.to_dict())
  return {"lightning_only": hybrid.replace(attn_type_list=(0,) * hybrid.num_hidden_layers),
          "hybrid_tiny": hybrid}


def _filled_cache(cfg, batch: int, context: int, extra: int):
  """A cache as a `context`-token prefill leaves it (random values, the right shapes)."""
  cache = inference.init_cache(cfg, batch, context + extra)
  key = jax.random.key(0)
  layers = jax.tree.map(lambda x: 0.1 * jax.random.normal(key, x.shape, x.dtype), cache.layers)
  return cache.replace(layers=layers, lengths=jnp.full((batch,), context, jnp.int32),
                       index=jnp.asarray(context, jnp.int32))


def bench_decode(cfgs, params) -> dict:
  out = {}
  for name, cfg in cfgs.items():
    rows = {}
    tokens = jnp.ones((_BATCH.value,), jnp.int32)
    # Interleave contexts across repeats so host-load drift hits all of them alike.
    caches = {int(c): _filled_cache(cfg, _BATCH.value, int(c), _STEPS.value + 1)
              for c in _CONTEXTS.value}
    times = {c: [] for c in caches}
    for c in caches:  # compile + warm-up
      logits, caches[c] = inference.decode_step(cfg, params[name], caches[c], tokens)
      logits.block_until_ready()
    for _ in range(_REPEATS.value):
      for c in caches:
        cache = _filled_cache(cfg, _BATCH.value, c, _STEPS.value + 1)
        jax.block_until_ready(cache)
        start = time.perf_counter()
        for _ in range(_STEPS.value):
          logits, cache = inference.decode_step(cfg, params[name], cache, tokens)
        logits.block_until_ready()
        times[c].append((time.perf_counter() - start) * 1e3 / _STEPS.value)
    base = min(times)
    for c in sorted(times):
      med = statistics.median(times[c])
      rows[str(c)] = {"ms_per_token_median": med, "ms_per_token_all": times[c],
                      "ratio_vs_%d" % base: med / statistics.median(times[base])}
    cache = _filled_cache(cfg, _BATCH.value, max(times), 1)
    rows["cache_bytes_at_max_context"] = inference.cache_bytes(cache)
    out[name] = rows
    print(name, {c: round(statistics.median(times[c]), 3) for c in times}, flush=True)
  return out


def _prefill_once(cfg, params, T: int) -> float:
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, T)), jnp.int32)
  mask = jnp.ones((1, T), jnp.int32)
  cache = inference.init_cache(cfg, 1, T + 1)
  start = time.perf_counter()
  logits, cache = inference.prefill(cfg, params, cache, ids, mask, _SEGMENT.value)
  jax.block_until_ready((logits, cache))
  return time.perf_counter() - start


def bench_prefill_time(cfg, params) -> dict:
  _prefill_once(cfg, params, _SEGMENT.value)  # compile the segment program
  rows, prev = {}, None
  for T in map(int, _PREFILL_LENS.value):
    t = statistics.median(_prefill_once(cfg, params, T) for _ in range(max(1, _REPEATS.value // 2)))
    rows[str(T)] = {"seconds": t, "ms_per_token": 1e3 * t / T,
                    "ratio_vs_previous_T": None if prev is None else t / prev}
    prev = t
    print("prefill", T, round(t, 3), flush=True)
  return rows


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def memory_child(T: int) -> None:
  cfg = _configs()["lightning_only"]
  params = init_params(MiniMaxM1ForCausalLM(cfg), jax.random.key(0))
  _prefill_once(cfg, params, _SEGMENT.value)
  warm = _rss_mib()
  seconds = _prefill_once(cfg, params, T)
  peak = _rss_mib()
  ids = jnp.zeros((1, _SEGMENT.value), jnp.int32)
  mem = inference.forward._compiled_steps(cfg)[0].lower(
      params, inference.init_cache(cfg, 1, T + 1), ids, ids).compile().memory_analysis()
  print(json.dumps({"T": T, "rss_after_warmup_mib": warm, "peak_rss_mib": peak,
                    "peak_growth_mib": peak - warm, "seconds": seconds,
                    "segment_temp_bytes": getattr(mem, "temp_size_in_bytes", None),
                    "segment_argument_bytes": getattr(mem, "argument_size_in_bytes", None)}))


def bench_memory() -> dict:
  rows = {}
  for T in map(int, _MEMORY_LENS.value):
    proc = subprocess.run([sys.executable, "-m", "experiments.bench_sampler",
                           f"--memory_child={T}", f"--segment_len={_SEGMENT.value}"],
                          capture_output=True, text=True, check=True)
    rows[str(T)] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("memory", rows[str(T)], flush=True)
  lens = list(rows)
  if len(lens) >= 2:
    rows["peak_rss_ratio_%s_vs_%s" % (lens[-1], lens[0])] = (
        rows[lens[-1]]["peak_rss_mib"] / rows[lens[0]]["peak_rss_mib"])
  return rows


def main(argv):
  del argv
  if _MEMORY_CHILD.value:
    memory_child(_MEMORY_CHILD.value)
    return
  start = time.time()
  # Other jobs share this host: record the load so the figures can be judged.
  load_start = os.getloadavg()
  cfgs = _configs()
  params = {name: init_params(MiniMaxM1ForCausalLM(cfg), jax.random.key(0))
            for name, cfg in cfgs.items()}
  results = {"decode": bench_decode(cfgs, params)}
  results["prefill_time_lightning_only"] = bench_prefill_time(cfgs["lightning_only"],
                                                              params["lightning_only"])
  results["prefill_peak_memory_lightning_only"] = bench_memory()
  record = {
      "benchmark": "sampler", "command": " ".join(["python -m experiments.bench_sampler"]
                                                  + sys.argv[1:]),
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "device": str(jax.devices()[0]), "jax_version": jax.__version__,
      "config": {"batch": _BATCH.value, "steps": _STEPS.value, "repeats": _REPEATS.value,
                 "segment_len": _SEGMENT.value, "model": "configs/tiny.py widths",
                 "configs": {k: list(v.attn_type_list) for k, v in cfgs.items()}},
      "gpu": "not measured: no GPU in this session (batch-64 decode throughput and a 1M-token "
             "prefill on one GPU are still to do)",
      "total_wall_s": time.time() - start,
      "load_average_1_5_15min": {"start": load_start, "end": os.getloadavg()},
      "cpu_count": os.cpu_count(), "results": results}
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(record, f, indent=2)
  print("wrote", _OUT.value)


if __name__ == "__main__":
  app.run(main)
