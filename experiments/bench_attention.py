"""CPU timing of causal GQA softmax attention: the XLA path, blockwise (flash) and torch SDPA.

  python -m experiments.bench_attention
  python -m experiments.bench_attention --seq_lens=1024 --repeats=3 --blocks=256,512  # quick

Per T and mode (fwd; fwd_bwd = output and the q/k/v gradients), each JAX function is jitted
and compiled once, then the median of --repeats runs is taken (each ended by
block_until_ready). torch.nn.functional.scaled_dot_product_attention runs the same shape
(is_causal=True; K/V repeated to H heads outside the timed region, as every torch version
takes; enable_gqa=True timed the same at T=1024 on this CPU). Blockwise runs at each
--blocks size (block_q = block_k); the ratios use the fastest. Writes
benchmarks/results/attention_cpu.json.
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

from m1jax.layers.softmax_attention import causal_gqa_attention  # noqa: E402
from m1jax.ops.blockwise_attention import blockwise_gqa_attention  # noqa: E402

_OUT = flags.DEFINE_string("out", "benchmarks/results/attention_cpu.json", "JSON output.")
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["1024", "4096"], "Sequence lengths T.")
_BLOCKS = flags.DEFINE_list("blocks", ["128", "256", "512"], "Blockwise chunk sizes.")
_MODES = flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "fwd and/or fwd_bwd.")
_BATCH = flags.DEFINE_integer("batch", 1, "B.")
_HEADS = flags.DEFINE_integer("heads", 8, "Query heads H.")
_KV_HEADS = flags.DEFINE_integer("kv_heads", 2, "KV heads K.")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "D.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per point (median reported).")


def _median_seconds(run, repeats: int) -> float:
  run()  # warm-up (and compile, for jitted functions)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _jax_fn(attend, mode):
  def fwd(q, k, v, pos):
    return attend(q, k, v, pos, pos)

  if mode == "fwd":
    return jax.jit(fwd)

  def loss(q, k, v, pos, do):
    return jnp.sum(fwd(q, k, v, pos) * do)

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _time_jax(attend, mode, arrays, repeats):
  q, k, v, pos, do = arrays
  fn = _jax_fn(attend, mode)
  args = (q, k, v, pos) if mode == "fwd" else (q, k, v, pos, do)
  return _median_seconds(lambda: jax.block_until_ready(fn(*args)), repeats)


def _time_torch(mode, arrays, repeats):
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  q, k, v, _, do = (torch.from_numpy(np.array(x)) for x in arrays)
  # torch wants [B, heads, T, D]; K/V repeated to H heads (untimed).
  group = q.shape[2] // k.shape[2]
  k, v = (x.repeat_interleave(group, dim=2) for x in (k, v))
  q, k, v, do = (x.transpose(1, 2).contiguous() for x in (q, k, v, do))

  def run():
    if mode == "fwd":
      with torch.no_grad():
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
      return
    qg, kg, vg = (x.detach().requires_grad_() for x in (q, k, v))
    o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)
    o.backward(do)

  return _median_seconds(run, repeats), torch.__version__, torch.get_num_threads()


def main(argv):
  del argv
  B, H, K, D = _BATCH.value, _HEADS.value, _KV_HEADS.value, _HEAD_DIM.value
  points = []
  torch_info = {}
  for T in (int(t) for t in _SEQ_LENS.value):
    r = np.random.default_rng(T)
    arrays = (jnp.asarray(r.standard_normal((B, T, H, D)), jnp.float32),
              jnp.asarray(r.standard_normal((B, T, K, D)), jnp.float32),
              jnp.asarray(r.standard_normal((B, T, K, D)), jnp.float32),
              jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T)),
              jnp.asarray(r.standard_normal((B, T, H, D)), jnp.float32))
    for mode in _MODES.value:
      point = {"T": T, "mode": mode, "seconds": {}}
      point["seconds"]["xla"] = _time_jax(causal_gqa_attention, mode, arrays, _REPEATS.value)
      for blk in (int(b) for b in _BLOCKS.value):
        attend = (lambda blk: lambda *a: blockwise_gqa_attention(*a, block_q=blk,
                                                                 block_k=blk))(blk)
        point["seconds"][f"blockwise_{blk}"] = _time_jax(attend, mode, arrays, _REPEATS.value)
      seconds, version, threads = _time_torch(mode, arrays, _REPEATS.value)
      point["seconds"]["torch_sdpa"] = seconds
      torch_info = {"version": version, "threads": threads}
      best = min((k for k in point["seconds"] if k.startswith("blockwise_")),
                 key=point["seconds"].get)
      s = point["seconds"]
      point["best_blockwise"] = best
      point["ratios"] = {"xla_over_torch": s["xla"] / s["torch_sdpa"],
                         "blockwise_over_torch": s[best] / s["torch_sdpa"],
                         "xla_over_blockwise": s["xla"] / s[best]}
      print(json.dumps(point), flush=True)
      points.append(point)
  result = {
      "benchmark": "causal GQA softmax attention, CPU: xla vs blockwise vs torch SDPA",
      "command": "python -m experiments.bench_attention",
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": {"platform": jax.default_backend(), "cpu_count": os.cpu_count(),
                 "load_avg_1m": os.getloadavg()[0]},
      "jax_version": jax.__version__, "torch": torch_info,
      "config": {"B": B, "H": H, "K": K, "D": D, "dtype": "float32",
                 "blocks": [int(b) for b in _BLOCKS.value], "repeats": _REPEATS.value},
      "points": points,
  }
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
