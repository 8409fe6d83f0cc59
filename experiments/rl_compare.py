"""CISPO vs DAPO (vs GRPO) from one SFT checkpoint: a miniature of the M1 report's Fig. 2.

Every run starts from the same SFT params with a fresh optimizer; runs with one seed share
the prompt stream, the sampler keys per step and the minibatch permutations (paired).
G = 8 completions for 8 prompts per step, mu = 4 minibatch updates per generation batch;
CISPO's cap is matched to DAPO's eps_high (0.28), with 4.0 as the secondary cap; the null
control runs both at mu = 1, where their gradients are equal.

  nice -n 10 python -m experiments.rl_compare --sft=runs/tiny --steps=20 --seeds=0,1,2

Headline: steps for each method to reach DAPO's final held-out sampled accuracy (tau = mean
over seeds of DAPO's accuracy at the last step), linearly interpolated between evals, and
the per-seed speedup S_DAPO / S_CISPO. Writes <out>.json (atomically, after every run, so a
cut-short run leaves its results; rerunning with the same flags skips the runs it holds) and
<out>.png, and each run's metrics.jsonl under --workdir.
"""
import json
import os
import time

from absl import app
from absl import flags
from absl import logging

_SFT = flags.DEFINE_string("sft", "runs/tiny", "SFT trainer workdir (experiments.train).")
_STEPS = flags.DEFINE_integer("steps", 20, "Rollout steps per run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the paired main runs.")
_LR = flags.DEFINE_float("lr", 1e-4, "Learning rate, the same for every method.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Rollout steps between held-out evals.")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 64, "Held-out prompts.")
_EVAL_SAMPLES = flags.DEFINE_integer("eval_samples", 2, "Samples per held-out prompt.")
_MU = flags.DEFINE_integer("mu", 4, "Minibatch updates per generation batch (main runs).")
_EXTRAS = flags.DEFINE_list("extras", ["null", "cispo_eps4", "grpo"],
                            "Controls after the main runs (first seed): null (mu=1 DAPO and "
                            "CISPO), cispo_eps4, grpo.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/rl_compare", "Output path stem.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/rl_compare", "Per-run metrics.jsonl here.")

_SPECS = {
    "dapo": dict(algorithm="dapo"),
    "cispo": dict(algorithm="cispo", is_epsilon_high=0.28),
    "cispo_eps4": dict(algorithm="cispo", is_epsilon_high=4.0),
    "grpo": dict(algorithm="grpo"),
}


def _config(sft, method, seed, mu):
  from configs import tiny_rl
  config = tiny_rl.get_config()
  r = config.rl
  for key, value in _SPECS[method].items():
    r[key] = value
  r.init_checkpoint, r.seed, r.num_steps = sft, seed, _STEPS.value
  r.learning_rate, r.num_minibatches = _LR.value, mu
  r.eval_examples, r.eval_samples = _EVAL_EXAMPLES.value, _EVAL_SAMPLES.value
  r.mismatch_check_every = 0
  return config


def _run(name, config, params, eval_set, eval0, writer_dir):
  """One run: metrics per step, held-out evals every eval_every steps."""
  from m1jax.rl.loop import RLRun
  from m1jax.train.metrics import MetricsWriter
  run = RLRun(config, None, params=params, verbose=False)
  run.eval_set = eval_set
  writer = MetricsWriter(writer_dir, enable_tensorboard=False)
  evals = {0: eval0}
  steps = []
  t0 = time.perf_counter()
  for step in range(run.s.num_steps):
    m = run.step(step)
    steps.append(m)
    writer.write(step + 1, m, prefix="train/")
    if (step + 1) % _EVAL_EVERY.value == 0 or step + 1 == run.s.num_steps:
      evals[step + 1] = run.evaluate()
      writer.write(step + 1, evals[step + 1], prefix="eval/")
      print(f"  {name} step {step + 1}: reward {m['reward/mean']:.3f} eval "
            f"{evals[step + 1]['pass@1_T1']:.3f} (greedy {evals[step + 1]['greedy_graded']:.3f})"
            f" clip_hi {m.get('clip_ratio/high_mean', 0):.4f} {time.perf_counter() - t0:.0f}s",
            flush=True)
  writer.close()
  keep = ("reward/mean", "entropy", "is_ratio/max", "is_ratio/mean", "groups_kept",
          "clip_ratio/high_mean", "clip_ratio/low_mean", "clip_ratio/high_mean@lowp",
          "cispo/clip_frac", "cispo/clip_frac_pos", "cispo/clip_frac@lowp",
          "response_length/mean", "time/generate", "time/update", "tokens/s_generate",
          "tokens/s_update", "updates")
  per_mb = sorted({k for m in steps for k in m if "/mb" in k})
  return {"evals": {str(k): v for k, v in evals.items()},
          "steps": [{k: float(m[k]) for k in keep + tuple(per_mb) if k in m} for m in steps],
          "seconds": time.perf_counter() - t0}


def _steps_to(evals: dict, tau: float, key="pass@1_T1"):
  """First step where the held-out curve reaches tau, linearly interpolated; None if never."""
  pts = sorted((int(k), v[key]) for k, v in evals.items())
  if pts[0][1] >= tau:
    return 0.0
  for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
    if y1 >= tau:
      return x0 + (x1 - x0) * (tau - y0) / (y1 - y0) if y1 > y0 else float(x1)
  return None


def _summarise(results: dict) -> dict:
  import numpy as np
  seeds = sorted({r["seed"] for r in results.values() if r["group"] == "main"})
  final = str(_STEPS.value)
  dapo = [results[f"dapo/s{s}"]["evals"][final]["pass@1_T1"] for s in seeds
          if f"dapo/s{s}" in results]
  if not dapo:
    return {}
  tau = float(np.mean(dapo))
  table, speedups = {}, []
  for s in seeds:
    row = {}
    for method in ("dapo", "cispo"):
      r = results.get(f"{method}/s{s}")
      if r:
        row[method] = _steps_to(r["evals"], tau)
        row[f"{method}_final"] = r["evals"][final]["pass@1_T1"]
        row[f"{method}_auc"] = float(np.mean([v["pass@1_T1"] for v in r["evals"].values()]))
    if row.get("dapo") and row.get("cispo"):
      row["speedup"] = row["dapo"] / max(row["cispo"], 1e-9)
      speedups.append(row["speedup"])
    elif row.get("dapo") and row.get("cispo") is None and "cispo" in row:
      row["speedup"] = None   # CISPO never reached tau
    table[str(s)] = row
  out = {"tau": tau, "per_seed": table,
         "median_speedup": float(np.median(speedups)) if speedups else None,
         "speedup_range": [float(min(speedups)), float(max(speedups))] if speedups else None}
  dapo_runs = [r for k, r in results.items() if k.startswith("dapo/")]
  if dapo_runs:
    mb = {}
    for k in range(1, _MU.value + 1):
      key = f"clip_ratio/high_mean/mb{k}"
      vals = [m[key] for r in dapo_runs for m in r["steps"] if key in m]
      mb[str(k)] = float(np.mean(vals)) if vals else None
    out["dapo_high_clip_by_minibatch"] = mb
    out["dapo_high_clip_lowp_mean"] = float(np.mean(
        [m.get("clip_ratio/high_mean@lowp", 0) for r in dapo_runs for m in r["steps"]]))
  cispo_runs = [r for k, r in results.items() if k.startswith("cispo/")]
  if cispo_runs:
    out["cispo_weight_clip_mean"] = float(np.mean(
        [m.get("cispo/clip_frac", 0) for r in cispo_runs for m in r["steps"]]))
  null = {k: r for k, r in results.items() if r["group"] == "null"}
  if len(null) == 2:
    a, b = (null[k]["evals"] for k in sorted(null))
    out["null_control_abs_diff"] = {k: abs(a[k]["pass@1_T1"] - b[k]["pass@1_T1"]) for k in a}
  return out


def _plot(results, summary, path):
  from m1jax.train.plot import pyplot
  plt = pyplot()
  import numpy as np
  fig, axes = plt.subplots(1, 4, figsize=(20, 4.4))
  colors = {"dapo": "C0", "cispo": "C3", "cispo_eps4": "C1", "grpo": "C2"}
  by_method = {}
  for name, r in results.items():
    if r["group"] == "main":
      by_method.setdefault(r["method"], []).append(r)
  ax = axes[0]
  for method, runs in by_method.items():
    xs = sorted(int(k) for k in runs[0]["evals"])
    ys = np.asarray([[r["evals"][str(x)]["pass@1_T1"] for x in xs] for r in runs])
    ax.plot(xs, ys.mean(0), marker="o", color=colors[method],
            label=f"{method} (mu={_MU.value}, {len(runs)} seeds)")
    if len(runs) > 1:
      ax.fill_between(xs, ys.mean(0) - ys.std(0), ys.mean(0) + ys.std(0),
                      color=colors[method], alpha=0.15)
  for name, r in results.items():
    if r["group"] != "main":
      xs = sorted(int(k) for k in r["evals"])
      ax.plot(xs, [r["evals"][str(x)]["pass@1_T1"] for x in xs], ls="--", marker=".",
              color=colors.get(r["method"], "gray"), alpha=0.7, label=name)
  if summary.get("tau") is not None:
    ax.axhline(summary["tau"], color="gray", lw=0.7, ls=":", label="tau (DAPO final)")
  ax.set_title("held-out sampled accuracy (T=1)")
  ax.set_xlabel("rollout step")
  ax.legend(fontsize=7)
  ax = axes[1]
  mb = summary.get("dapo_high_clip_by_minibatch") or {}
  if mb:
    ax.bar([int(k) for k in mb], [v or 0 for v in mb.values()], color="C0",
           label="DAPO high clip (r>1.28, A>0)")
  cispo_runs = by_method.get("cispo", [])
  if cispo_runs:
    vals = [np.mean([m.get(f"cispo/clip_frac/mb{k}", 0) for r in cispo_runs
                     for m in r["steps"]]) for k in range(1, _MU.value + 1)]
    ax.plot(range(1, _MU.value + 1), vals, "o-", color="C3", label="CISPO weight capped")
  ax.set_title("clip fraction by minibatch index k")
  ax.set_xlabel("minibatch index within a generation batch")
  ax.legend(fontsize=7)
  for ax, key, title in ((axes[2], "entropy", "entropy"),
                         (axes[3], "is_ratio/max", "max importance ratio")):
    for method, runs in by_method.items():
      ys = np.asarray([[m.get(key, np.nan) for m in r["steps"]] for r in runs])
      ax.plot(range(1, ys.shape[1] + 1), np.nanmean(ys, 0), color=colors[method], label=method)
    ax.set_title(title)
    ax.set_xlabel("rollout step")
    ax.legend(fontsize=7)
  axes[3].set_yscale("log")
  fig.tight_layout()
  fig.savefig(path + ".tmp", dpi=100, format="png")
  os.replace(path + ".tmp", path)
  plt.close(fig)


def _write_json(path, obj):
  """Temp file then rename, so a run killed mid-write leaves the previous complete file."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _resume(path, protocol):
  """Finished runs of an earlier invocation with the same protocol; ({}, 0) if none."""
  if not os.path.exists(path):
    return {}, 0.0
  with open(path) as f:
    old = json.load(f)
  before = dict(old.get("protocol", {}))
  wall = before.pop("wall_seconds", 0.0)
  if before != protocol:
    raise app.UsageError(f"{path} holds runs of another protocol ({before}); move it away or "
                         f"pass another --out")
  return old.get("runs", {}), wall


def main(argv):
  del argv
  # Orbax logs every restore at INFO; progress lines come from this script.
  logging.set_verbosity(logging.WARNING)
  from m1jax.rl.evaluate import evaluate_policy
  from m1jax.rl.loop import RLRun
  seeds = [int(s) for s in _SEEDS.value]
  main_runs = [(f"{m}/s{s}", m, s, _MU.value, "main") for s in seeds for m in ("dapo", "cispo")]
  # The first seed's pair, then the null control, then the other seeds: a run cut short by
  # the clock still has one paired comparison and its control.
  plan = main_runs[:2]
  if "null" in _EXTRAS.value:
    plan += [(f"{m}_mu1/s{seeds[0]}", m, seeds[0], 1, "null") for m in ("dapo", "cispo")]
  plan += main_runs[2:]
  for extra in _EXTRAS.value:
    if extra == "null":
      continue
    elif extra in _SPECS:
      plan.append((f"{extra}/s{seeds[0]}", extra, seeds[0], _MU.value, "extra"))
    else:
      raise app.UsageError(f"--extras: unknown {extra!r}")
  base = RLRun(_config(_SFT.value, "cispo", 0, _MU.value), None, verbose=False)
  params, eval_set = base.state.params, base.eval_set
  t0 = time.perf_counter()
  eval0 = evaluate_policy(base.model, params, base.tokenizer, base.task, base.s, eval_set)
  print(f"SFT checkpoint {_SFT.value}: held-out {eval0} ({time.perf_counter() - t0:.0f}s)",
        flush=True)
  protocol = {"sft": _SFT.value, "steps": _STEPS.value, "seeds": seeds, "lr": _LR.value,
              "G": 8, "prompts_per_step": 8, "mu": _MU.value, "eval_every": _EVAL_EVERY.value,
              "eval_examples": _EVAL_EXAMPLES.value, "eval_samples": _EVAL_SAMPLES.value}
  results, wall_before = _resume(_OUT.value + ".json", protocol)
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  started = time.time()
  for name, method, seed, mu, group in plan:
    if name in results:
      print(f"== {name}: done in {_OUT.value}.json, skipped", flush=True)
      continue
    print(f"== {name} (mu={mu})", flush=True)
    config = _config(_SFT.value, method, seed, mu)
    r = _run(name, config, params, eval_set, eval0,
             os.path.join(_WORKDIR.value, name.replace("/", "_")))
    results[name] = {"method": method, "seed": seed, "mu": mu, "group": group, **r}
    summary = _summarise(results)
    protocol["wall_seconds"] = wall_before + time.time() - started
    _write_json(_OUT.value + ".json", {"protocol": protocol, "sft_eval": eval0,
                                       "summary": summary, "runs": results})
    _plot(results, summary, _OUT.value + ".png")
  print(json.dumps(_summarise(results), indent=1))
  print(f"wrote {_OUT.value}.json and .png")


if __name__ == "__main__":
  app.run(main)
