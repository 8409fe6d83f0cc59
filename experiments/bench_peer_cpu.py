"""CPU race against transformers' eager torch (issue 16 item 2): the same weights, one run.

  python -m experiments.bench_peer_cpu
  python -m experiments.bench_peer_cpu --seq_lens=1024 --repeats=2 --skip_greedy  # quick

Model: the issue's 8-layer hybrid (7 lightning + 1 softmax layer, M 256, H 8 x 32, KV 2,
E 8 top-2, F 256, V 4096), float32 on both sides. m1jax initialises it, writes it with
m1jax.save_pretrained(dialect="minimax") and transformers.MiniMaxForCausalLM.from_pretrained
loads those files. transformers 5.23 rotates the whole head_dim (it ignores
partial_rotary_factor), so the model uses rotary_dim = head_dim and both compute the same
math; the logits are compared before anything is timed (max |diff| <= 1e-4 max |logits|).
m1jax runs its lightning operator in chunks of --block_size (default 64, the fastest on this
CPU at head_dim 32; every chunk length computes the same function) while the files, and so
torch, keep the model's 256.

Timed, per T in --seq_lens (B = 1):
  fwd      logits [1,T,V] (torch under inference_mode; ours jitted);
  fwd_bwd  mean next-token cross-entropy and its gradient w.r.t. every parameter (torch
           .backward(); ours jax.grad, the gradients blocked on);
and greedy generation of --new_tokens after a --prompt_len prompt (m1jax.generate against
HF .generate(do_sample=False), no EOS, so both emit exactly --new_tokens tokens).
Repeats ALTERNATE between m1jax and torch in this one process, so both see the same
machine load; each point reports both medians and ratio = torch / m1jax (> 1: m1jax is
faster). Compile and the first torch call are warm-ups, outside the medians.
Threads: torch.set_num_threads(--threads); XLA:CPU has no thread-count flag and sizes its
pool by the cores the process may run on (its affinity mask), so --threads defaults to that
count and the JSON records both. `taskset -c 0 python -m experiments.bench_peer_cpu` runs both
single-threaded on one core: on a shared, oversubscribed machine torch's 2-thread OpenMP
regions stall whenever one of their threads is descheduled (see WORKSPACE_NOTES.md, issue 16),
so the pinned run is the load-robust comparison.
Allocator: by default the process re-executes itself with m1jax.cpu_malloc's glibc settings
(`--malloc=tuned`), which keep freed buffers mapped; `--malloc=system` keeps glibc's defaults.
Both sides run in the same process, so both get the same allocator; the JSON records it.
Writes benchmarks/results/peer_cpu.json (atomically) with the load average before and after.
"""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import m1jax  # noqa: E402
from m1jax import cpu_malloc  # noqa: E402
from m1jax.config import ModelConfig  # noqa: E402
from m1jax.model import MiniMaxM1ForCausalLM, init_params  # noqa: E402

_OUT = flags.DEFINE_string("out", "benchmarks/results/peer_cpu.json", "JSON output.")
_SEQ_LENS = flags.DEFINE_list("seq_lens", ["1024", "4096", "16384"], "Sequence lengths T.")
_MODES = flags.DEFINE_list("modes", ["fwd", "fwd_bwd"], "fwd and/or fwd_bwd.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs per side and point (median).")
_LONG_REPEATS = flags.DEFINE_integer("long_repeats", 1, "Timed runs per side at T > 4096.")
_PROMPT = flags.DEFINE_integer("prompt_len", 512, "Greedy: prompt tokens.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Greedy: generated tokens.")
_SKIP_GREEDY = flags.DEFINE_bool("skip_greedy", False, "Leave the greedy point out.")
_THREADS = flags.DEFINE_integer("threads", len(os.sched_getaffinity(0)),
                                "torch threads (default: the cores this process may use; "
                                "XLA:CPU's pool has one thread per such core).")
_MALLOC = flags.DEFINE_enum("malloc", "tuned", ["tuned", "system"],
                            "tuned: re-exec with m1jax.cpu_malloc.SETTINGS (buffers stay "
                            "mapped between steps); system: glibc's defaults.")
_MOE = flags.DEFINE_string("moe_impl", None, "ModelConfig.moe_impl (default: the config's).")
_ATTN = flags.DEFINE_string("attention_impl", None, "ModelConfig.attention_impl override.")
_BLOCK = flags.DEFINE_integer("block_size", 64, "m1jax's lightning chunk length (any value "
                              "is the same math; 64 measured fastest on CPU at head_dim 32). "
                              "The HF files, so torch, keep the model's 256.")


def model_config(**overrides) -> ModelConfig:
  """The issue's 8-layer hybrid, full rotary (see the module docstring)."""
  values = dict(vocab_size=4096, hidden_size=256, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, head_dim=32, intermediate_size=256,
                num_local_experts=8, num_experts_per_tok=2, attn_type_list=(0,) * 7 + (1,),
                rotary_dim=32, rope_theta=10_000.0, max_position_embeddings=65_536,
                block_size=256)
  values.update({k: v for k, v in overrides.items() if v is not None})
  return ModelConfig(**values)


def _load_torch(cfg: ModelConfig, params, workdir: str):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  m1jax.save_pretrained(cfg, params, workdir, dialect="minimax")
  hf = transformers.MiniMaxForCausalLM.from_pretrained(workdir, dtype=torch.float32)
  hf.eval()
  # No EOS: greedy runs exactly new_tokens steps on both sides.
  hf.generation_config.eos_token_id = None
  hf.generation_config.pad_token_id = 0
  return hf


def _check_logits(model, params, hf, T: int = 300) -> dict:
  """Both models on the same ids; a mismatch stops the benchmark before any timing."""
  import torch  # pylint: disable=g-import-not-at-top
  ids = np.random.default_rng(1).integers(0, model.config.vocab_size, (1, T))
  ours = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)).logits)
  with torch.inference_mode():
    ref = hf(torch.from_numpy(ids)).logits.float().numpy()
  diff, scale = float(np.max(np.abs(ours - ref))), float(np.max(np.abs(ref)))
  if not diff <= 1e-4 * scale:
    raise SystemExit(f"logits differ: max |diff| {diff:.3g} > 1e-4 * max |logits| {scale:.3g}")
  return {"T": T, "max_abs_diff": diff, "max_abs_logit": scale}


def _alternate(ours, theirs, repeats: int) -> dict:
  """Warm-up, then `repeats` rounds of (ours, theirs); medians and torch/ours. Two warm-up
  rounds: the first compiles ours; in the second each side meets the other's allocations
  once (the heap grows to the pair's joint peak; a first timed m1jax run after a torch run
  took 1.5-4x its steady time doing that). With one repeat (the long points) torch's
  warm-up is left out: eager torch compiles nothing, and a warm-up there costs as much as
  the timed run."""
  for _ in range(2 if repeats > 1 else 1):
    ours()
    if repeats > 1:
      theirs()
  times = {"m1jax": [], "torch": []}
  for _ in range(repeats):
    for name, fn in (("m1jax", ours), ("torch", theirs)):
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  med = {k: statistics.median(v) for k, v in times.items()}
  return {"seconds": med, "runs": times, "ratio": med["torch"] / med["m1jax"]}


def _cross_entropy(logits_BTV, ids_BT):
  """transformers' causal-LM loss: mean CE of logits[:, :-1] against ids[:, 1:]."""
  logp = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, ids_BT[:, 1:, None], axis=-1))


def _ours(model, params, mode: str):
  if mode == "fwd":
    fn = jax.jit(lambda p, ids: model.apply({"params": p}, ids).logits)
  else:
    fn = jax.jit(jax.grad(lambda p, ids: _cross_entropy(model.apply({"params": p}, ids).logits,
                                                        ids)))
  return lambda ids: jax.block_until_ready(fn(params, ids))


def _torch(hf, mode: str):
  import torch  # pylint: disable=g-import-not-at-top

  def fwd(ids):
    with torch.inference_mode():
      return hf(ids).logits

  def fwd_bwd(ids):
    hf.zero_grad(set_to_none=True)
    hf(ids, labels=ids).loss.backward()

  return fwd if mode == "fwd" else fwd_bwd


def _greedy(model, params, hf, prompt_len: int, new_tokens: int, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  prompt = np.random.default_rng(2).integers(3, model.config.vocab_size, (1, prompt_len))
  out = {}

  def ours():
    out["m1jax"] = m1jax.generate(model, params, prompt, max_new_tokens=new_tokens).tokens[0]

  def theirs():
    with torch.inference_mode():
      seq = hf.generate(torch.from_numpy(prompt), max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens, do_sample=False)
    out["torch"] = seq[0, prompt_len:].numpy()

  point = _alternate(ours, theirs, repeats)
  point.update(prompt_len=prompt_len, new_tokens=new_tokens,
               tokens_per_s={k: new_tokens / v for k, v in point["seconds"].items()},
               # Random weights have near-tied logits; the first divergence is reported, not
               # asserted (the logits check above is the equivalence test).
               same_tokens_prefix=int(np.argmin(np.append(out["m1jax"] == out["torch"],
                                                           False))))
  return point


def _write_json(path: str, payload: dict) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


def main(argv):
  del argv
  if _MALLOC.value == "tuned":
    cpu_malloc.reexec_with_settings()
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(_THREADS.value)
  load_before = os.getloadavg()
  hf_cfg = model_config(moe_impl=_MOE.value, attention_impl=_ATTN.value)
  cfg = hf_cfg.replace(block_size=_BLOCK.value)
  model = MiniMaxM1ForCausalLM(cfg)
  params = init_params(model, jax.random.key(0))
  with tempfile.TemporaryDirectory() as workdir:
    hf = _load_torch(hf_cfg, params, workdir)
  check = _check_logits(model, params, hf)
  print(json.dumps({"logits_check": check}), flush=True)
  points = []
  for T in (int(t) for t in _SEQ_LENS.value):
    ids = np.random.default_rng(T).integers(0, cfg.vocab_size, (1, T))
    ids_jax, ids_torch = jnp.asarray(ids, jnp.int32), torch.from_numpy(ids)
    repeats = _REPEATS.value if T <= 4096 else _LONG_REPEATS.value
    for mode in _MODES.value:
      ours, theirs = _ours(model, params, mode), _torch(hf, mode)
      point = _alternate(lambda: ours(ids_jax), lambda: theirs(ids_torch), repeats)
      point.update(T=T, mode=mode, load_avg_1m=os.getloadavg()[0])
      print(json.dumps(point), flush=True)
      points.append(point)
  if not _SKIP_GREEDY.value:
    point = _greedy(model, params, hf, _PROMPT.value, _NEW.value, _REPEATS.value)
    point.update(mode="greedy", load_avg_1m=os.getloadavg()[0])
    print(json.dumps(point), flush=True)
    points.append(point)
  result = {
      "benchmark": "m1jax vs transformers.MiniMaxForCausalLM (eager torch), same weights, CPU",
      "command": "python -m experiments.bench_peer_cpu " + " ".join(sys.argv[1:]),
      "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "device": (f"{os.cpu_count()}-core CPU (shared, load {load_before[0]:.2f}), this run on "
                 f"{len(os.sched_getaffinity(0))} of its cores"),
      "malloc": ({k: os.environ.get(k) for k in cpu_malloc.SETTINGS}
                 if _MALLOC.value == "tuned" else "glibc defaults"),
      "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg()),
      "threads": {"torch": torch.get_num_threads(),
                  "xla_cpu_pool": len(os.sched_getaffinity(0))},
      "versions": {"jax": jax.__version__, "torch": torch.__version__,
                   "transformers": transformers.__version__},
      "config": {**cfg.to_dict(), "attn_type_list": list(cfg.attn_type_list),
                 "dtype_both_sides": "float32", "batch": 1,
                 "torch_block_size": hf_cfg.block_size},
      "logits_check": check,
      "ratio_means": "torch seconds / m1jax seconds (> 1: m1jax faster)",
      "points": points,
  }
  _write_json(_OUT.value, result)
  for p in points:
    print(f"{p['mode']:8s} T={p.get('T', p.get('prompt_len'))!s:6s} m1jax "
          f"{p['seconds']['m1jax']:.3f} s  torch {p['seconds']['torch']:.3f} s  "
          f"ratio {p['ratio']:.2f}")


if __name__ == "__main__":
  app.run(main)
