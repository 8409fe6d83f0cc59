"""RL rollout-step timing on this host: generation, the mu updates, tokens/s, from the SFT
checkpoint with configs/tiny_rl.py (P = 8 prompts x G = 8, mu = 4 minibatches of 16 x 32).

  python -m experiments.bench_rl_step --sft=runs/rl_sft --steps=6 --label=after \
      --out=benchmarks/results/rl_step_cpu.json

Uses only RLRun(...).step(i) and its time/* metrics, so the same script times an older
checkout (run it from that tree) for a before/after pair. The first step (compiles) is
reported apart; the rest are summarised by their median. Appends one record to --out (JSON
list), naming the device and the load average.
"""
import json
import os
import statistics
import time

from absl import app
from absl import flags

from m1jax import config_overrides

_CONFIG = config_overrides.define_config_file("config", "configs/tiny_rl.py",
                                              "A configs/*.py file with an rl section.")
_SFT = flags.DEFINE_string("sft", "runs/rl_sft", "SFT trainer workdir (the policy).")
_STEPS = flags.DEFINE_integer("steps", 6, "Rollout steps to time (the first compiles).")
_LABEL = flags.DEFINE_string("label", "", "Name of this record (e.g. before / after).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/rl_step_cpu.json", "JSON list to "
                           "append to.")


def main(argv):
  del argv
  import jax
  from m1jax.rl.loop import RLRun, load_sft_params
  config = _CONFIG.value
  config.rl.init_checkpoint = _SFT.value
  config.rl.eval_examples = 0
  params = load_sft_params(config, _SFT.value)
  run = RLRun(config, None, params=params, verbose=False)
  load_start = os.getloadavg()
  steps = []
  for i in range(_STEPS.value):
    m = run.step(i)
    steps.append({k: float(m[k]) for k in ("time/generate", "time/update", "time/step",
                                           "tokens/s_generate", "tokens/s_update",
                                           "updates")})
    print(f"step {i}: " + ", ".join(f"{k}={v:.3g}" for k, v in steps[-1].items()), flush=True)
  rest = steps[1:]
  median = {k: statistics.median(s[k] for s in rest) for k in rest[0]} if rest else {}
  load_end = os.getloadavg()
  record = {"label": _LABEL.value, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime()),
            "device": f"{jax.device_count()}x {jax.devices()[0].platform} "
                      f"({os.cpu_count()}-core CPU host, shared, load "
                      f"{load_start[0]:.1f} -> {load_end[0]:.1f})",
            "config": {"prompts_per_step": run.s.prompts_per_step,
                       "num_generations": run.s.num_generations, "mu": run.s.mu,
                       "seq_len": run.s.seq_len,
                       "loss_chunk_tokens": config.train.loss_chunk_tokens,
                       "mesh": config.get("mesh", "")},
            "first_step": steps[0], "median_after_first": median, "steps": steps}
  records = []
  if os.path.exists(_OUT.value):
    with open(_OUT.value) as f:
      records = json.load(f)
  records.append(record)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  tmp = _OUT.value + ".tmp"
  with open(tmp, "w") as f:
    json.dump(records, f, indent=1)
  os.replace(tmp, _OUT.value)
  print(json.dumps({"label": record["label"], "device": record["device"], **median}))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
