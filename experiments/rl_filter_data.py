"""pass@k prompt filtering for RL (M1 report §4.1): sample k completions per prompt with the
SFT checkpoint, keep the prompts whose pass rate is strictly inside (low, high), write them
(atomically) as JSONL for `--config.rl.prompt_file`.

  python -m experiments.rl_filter_data --checkpoint=runs/tiny --k=10 --low=0 --high=0.9 \
      --num_prompts=256 --out=runs/tiny_rl_prompts.jsonl
  python -m experiments.rl --config.rl.prompt_file=runs/tiny_rl_prompts.jsonl

Prompts are the RL stream's (split 0 of data.task from rl.prompt_offset, under rl.seed), so
the kept indices mean the same problems to the RL run. Sampling uses the RL settings
(rl.temperature, top_p, top_k, max_new_tokens); prints the pass-rate histogram.
"""
import collections
import json

from absl import app
from absl import flags
from absl import logging

from m1jax import config_overrides

_CONFIG = config_overrides.define_config_file(
    "config", "configs/tiny_rl.py", "A configs/*.py file with an rl section.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "SFT trainer workdir to sample with (default: rl.init_checkpoint).")
_OUT = flags.DEFINE_string("out", None, "JSONL of the kept prompts (written atomically).",
                           required=True)
_K = flags.DEFINE_integer("k", 10, "Samples per prompt.")
_LOW = flags.DEFINE_float("low", 0.0, "Keep prompts with pass rate > low.")
_HIGH = flags.DEFINE_float("high", 0.9, "Keep prompts with pass rate < high.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 256, "Prompts to score.")
_BATCH_PROMPTS = flags.DEFINE_integer(
    "batch_prompts", 16, "Prompts per generate call (batch_prompts * k rows).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from m1jax.config import ModelConfig
  from m1jax.model import MiniMaxM1ForCausalLM
  from m1jax.rl.config import resolve
  from m1jax.rl.loop import load_sft_params, rl_task
  from m1jax.rl.prompt_filter import check_band, in_band, pass_rates, write_jsonl_atomic
  from m1jax.train.data import make_tokenizer

  config = _CONFIG.value
  if "rl" not in config:
    raise app.UsageError("the config has no rl section; use configs/tiny_rl.py")
  try:
    s = resolve(config.rl)
    check_band(_K.value, _LOW.value, _HIGH.value)
    if _NUM_PROMPTS.value < 1 or _BATCH_PROMPTS.value < 1:
      raise ValueError(f"--num_prompts={_NUM_PROMPTS.value} and --batch_prompts="
                       f"{_BATCH_PROMPTS.value} must be >= 1")
    task = rl_task(config)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  checkpoint = _CHECKPOINT.value or s.init_checkpoint
  model_config = ModelConfig.from_dict(config.model.to_dict())
  params = load_sft_params(config, checkpoint)
  model = MiniMaxM1ForCausalLM(model_config)
  tokenizer = make_tokenizer(config.data, model_config.vocab_size)
  indices = [s.prompt_offset + i for i in range(_NUM_PROMPTS.value)]
  examples = [task.example(s.seed, i, split=0) for i in indices]
  rates = pass_rates(model, params, tokenizer, task, examples, s, k=_K.value,
                     batch_prompts=_BATCH_PROMPTS.value, seed=s.seed)
  keep = in_band(rates, _LOW.value, _HIGH.value)
  records = [{"index": i, "seed": s.seed, "pass_rate": float(r), "k": _K.value,
              "prompt": ex.prompt, "answer": ex.answer}
             for i, ex, r, kept in zip(indices, examples, rates, keep) if kept]
  write_jsonl_atomic(_OUT.value, records)
  histogram = collections.Counter(round(float(r), 3) for r in rates)
  print("pass rate -> prompts: " + ", ".join(f"{r:g}: {n}" for r, n in sorted(histogram.items())))
  print(json.dumps({"scored": len(indices), "kept": len(records), "band": [_LOW.value,
                                                                           _HIGH.value],
                    "k": _K.value, "checkpoint": checkpoint, "out": _OUT.value,
                    "mean_pass_rate": float(rates.mean())}))


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
