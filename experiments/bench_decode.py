"""CPU benchmark of generate's two decode loops (issue 16 item 3): the on-device while_loop
against the host loop, tokens/s at batch 1 and 64, in one run.

  python -m experiments.bench_decode
  python -m experiments.bench_decode --batches=1 --new_tokens=32 --repeats=2   # quick

Model: the issue's 8-layer hybrid (7 lightning + 1 softmax, M 256, H 8 x 32, KV 2, E 8
top-2, F 256, V 4096), float32, random weights. Each point prefills a --prompt_len prompt per
row (outside the timer, a fresh cache each repeat since the loops donate it), then times the
decode of --new_tokens greedy tokens with no EOS, so both loops run every step:
  host    m1jax.inference.decode_loop.host_decode (jitted step + one host sync per token);
  device  m1jax.inference.decode_loop.device_decode (one jitted lax.while_loop).
tokens/s = batch x new_tokens / seconds. Repeats alternate host and device so both see the
same machine load; medians and minima are reported with ratio = host seconds / device seconds
(> 1: the while_loop is faster). The two loops' tokens are checked equal before timing. Compile is a
warm-up outside the medians.
Writes benchmarks/results/decode_cpu.json (atomically) with the load average before/after.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from m1jax.config import ModelConfig  # noqa: E402
from m1jax.hf.outputs import write_json  # noqa: E402
from m1jax.inference.cache import init_cache  # noqa: E402
from m1jax.inference.decode_loop import device_decode, host_decode  # noqa: E402
from m1jax.inference.segmented_prefill import prefill  # noqa: E402
from m1jax.model import MiniMaxM1ForCausalLM, init_params  # noqa: E402

_OUT = flags.DEFINE_string("out", "benchmarks/results/decode_cpu.json", "JSON output.")
_BATCHES = flags.DEFINE_list("batches", ["1", "64"], "Batch sizes.")
_PROMPT = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Decoded tokens per row.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed runs per loop and batch.")

SAMPLING = dict(temperature=0.0, top_k=0, top_p=1.0, stop_after=None, stop_prob=0.99)


def model_config() -> ModelConfig:
  return ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                     intermediate_size=256, num_local_experts=8, num_experts_per_tok=2,
                     attn_type_list=(0,) * 7 + (1,), rotary_dim=16, rope_theta=10_000.0,
                     block_size=256)


def _prefilled(cfg, params, batch: int):
  """(logits_BV, cache) after a prompt per row; capacity prompt + new_tokens."""
  ids = jnp.asarray(np.random.default_rng(batch).integers(0, cfg.vocab_size,
                                                          (batch, _PROMPT.value)), jnp.int32)
  cache = init_cache(cfg, batch, _PROMPT.value + _NEW.value)
  logits_BV, cache = prefill(cfg, params, cache, ids, jnp.ones_like(ids), _PROMPT.value)
  jax.block_until_ready((logits_BV, cache))
  return logits_BV, cache


def _run(loop: str, cfg, params, batch: int):
  """-> (seconds, tokens) of one decode from a fresh prefill."""
  logits_BV, cache = _prefilled(cfg, params, batch)
  args = (cfg, params, cache, logits_BV, jax.random.key(0), jnp.zeros((0,), jnp.int32), 0,
          _NEW.value, SAMPLING)
  start = time.perf_counter()
  if loop == "host":
    tokens, _, _ = host_decode(*args)
  else:
    tokens, _, _ = device_decode(*args, width=_NEW.value)
  return time.perf_counter() - start, tokens  # both return numpy: the work is done


def bench_batch(cfg, params, batch: int) -> dict:
  warm = {loop: _run(loop, cfg, params, batch)[1] for loop in ("host", "device")}
  if not np.array_equal(warm["host"], warm["device"]):
    raise AssertionError(f"batch {batch}: the host and device loops gave different tokens")
  times = {"host": [], "device": []}
  for _ in range(_REPEATS.value):
    for loop in times:
      times[loop].append(_run(loop, cfg, params, batch)[0])
  tokens = batch * _NEW.value
  # The minimum is reported beside the median: on a shared host, other jobs only ever add
  # time, so the fastest run is the least disturbed one.
  row = {loop: {"seconds_median": statistics.median(t), "seconds_min": min(t),
                "seconds_all": t, "tokens_per_s": tokens / statistics.median(t),
                "tokens_per_s_best": tokens / min(t)} for loop, t in times.items()}
  row["ratio_host_over_device"] = (row["host"]["seconds_median"]
                                   / row["device"]["seconds_median"])
  row["ratio_host_over_device_best"] = row["host"]["seconds_min"] / row["device"]["seconds_min"]
  print(f"batch {batch}: host {row['host']['tokens_per_s']:.1f} tok/s, device "
        f"{row['device']['tokens_per_s']:.1f} tok/s (medians), ratio "
        f"{row['ratio_host_over_device']:.2f}; best runs: ratio "
        f"{row['ratio_host_over_device_best']:.2f}", flush=True)
  return row


def main(argv):
  del argv
  batches = [int(b) for b in _BATCHES.value]
  if any(b < 1 for b in batches) or _NEW.value < 1 or _PROMPT.value < 1 or _REPEATS.value < 1:
    raise ValueError("bench_decode: --batches, --new_tokens, --prompt_len and --repeats must "
                     "be >= 1")
  load_before = os.getloadavg()
  cfg = model_config()
  params = init_params(MiniMaxM1ForCausalLM(cfg), jax.random.key(0))
  rows = {str(b): bench_batch(cfg, params, b) for b in batches}
  load_after = os.getloadavg()
  result = {
      "what": "generate's decode: on-device lax.while_loop vs host loop, greedy, no EOS",
      "device": f"{os.cpu_count()}-core CPU (shared, load {load_before[0]:.1f} before, "
                f"{load_after[0]:.1f} after)",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "jax": jax.__version__,
      "model": {k: v for k, v in cfg.to_dict().items() if k in (
          "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "num_key_value_heads", "head_dim", "intermediate_size", "num_local_experts",
          "num_experts_per_tok", "attn_type_list", "moe_impl", "attention_impl")},
      "prompt_len": _PROMPT.value, "new_tokens": _NEW.value, "repeats": _REPEATS.value,
      "load_avg_before": load_before, "load_avg_after": load_after,
      "batches": rows,
  }
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  write_json(_OUT.value, result)


if __name__ == "__main__":
  app.run(main)
