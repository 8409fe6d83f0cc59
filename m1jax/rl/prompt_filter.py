"""pass@k prompt filtering (the M1 report §4.1): sample k completions per prompt with a
checkpoint, keep the prompts whose pass rate lies strictly inside (low, high), write them as
JSONL for `rl.prompt_file`. Prompts every sample solves (or none does) give a group of equal
rewards, hence zero advantage and no gradient: filtering them offline saves the rollouts
dynamic sampling would throw away online.

A kept prompt is stored by its index in the task's split-0 stream under `seed` (examples
are pure functions of (seed, split, index)), with its text and answer for inspection; the RL
loop reads the indices back (`read_prompt_indices`) and checks the seed.
"""
import json
import os
import tempfile

import numpy as np

from m1jax.rl.rewards import task_rewards
from m1jax.rl.rollout import completion_text, encode_prompt, generate_rows, sampler_seed

_FILTER_SALT = 0xF117


def check_band(k, low, high) -> None:
  """Raises ValueError naming the flag unless k >= 1 and 0 <= low < high <= 1."""
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"k={k!r}: need an int >= 1 samples per prompt")
  if not (0.0 <= low < high <= 1.0):
    raise ValueError(f"low={low!r}, high={high!r}: the kept band (low, high) needs "
                     "0 <= low < high <= 1")


def pass_rates(model, params, tokenizer, task, examples: list, s, *, k: int,
               batch_prompts: int, seed: int) -> np.ndarray:
  """[P] float: the fraction of k samples (m1jax.generate at the RL sampling settings of
  RLSettings `s`) that task.grade passes, per example. Prompts go batch_prompts at a time
  (batch_prompts * k rows); the last batch is padded with copies of its first prompt so every
  call has one shape (one compile), and the copies are not counted."""
  if batch_prompts < 1:
    raise ValueError(f"batch_prompts={batch_prompts!r} must be >= 1")
  rates = []
  for b, start in enumerate(range(0, len(examples), batch_prompts)):
    chunk = examples[start:start + batch_prompts]
    padded = chunk + [chunk[0]] * (batch_prompts - len(chunk))
    prompts = [encode_prompt(tokenizer, ex.prompt) for ex in padded for _ in range(k)]
    out, _ = generate_rows(model, params, tokenizer, prompts, s,
                           sampler_seed(seed, b, _FILTER_SALT))
    real = len(chunk) * k
    texts = [completion_text(tokenizer, out.tokens[i, :out.lengths[i]]) for i in range(real)]
    rewards = task_rewards(task, [ex for ex in chunk for _ in range(k)], texts)
    rates.append((rewards >= 1.0).reshape(len(chunk), k).mean(axis=1))
  return np.concatenate(rates) if rates else np.zeros((0,))


def in_band(rates, low: float, high: float) -> np.ndarray:
  """Kept: low < rate < high (strict, as the report's "strictly between 0 and 0.9")."""
  rates = np.asarray(rates)
  return (rates > low) & (rates < high)


def step_prompt_indices(s, step: int, kept: list[int] | None = None) -> list[int]:
  """The task-stream indices of rollout step `step`'s prompts: the stream from
  rl.prompt_offset, or the `kept` indices of a prompt file, cycled."""
  positions = range(step * s.prompts_per_step, (step + 1) * s.prompts_per_step)
  if kept is None:
    return [s.prompt_offset + p for p in positions]
  return [kept[p % len(kept)] for p in positions]


def write_jsonl_atomic(path: str, records: list[dict]) -> None:
  """One JSON object per line, written to a temporary file beside `path` then renamed, so a
  reader never sees a partial file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".jsonl")
  try:
    with os.fdopen(fd, "w") as f:
      for r in records:
        f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def read_prompt_indices(path: str, seed: int) -> list[int]:
  """The kept prompts' stream indices from a prompt file, checked: it exists, is non-empty
  and was written for the same rl.seed (another seed's index names another problem)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"rl.prompt_file={path!r} does not exist; write one with "
                            "python -m experiments.rl_filter_data")
  indices = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        index, record_seed = int(record["index"]), record["seed"]
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"rl.prompt_file={path!r} line {n}: not a prompt record "
                         f"({e!r})") from None
      if record_seed != seed:
        raise ValueError(f"rl.prompt_file={path!r} line {n} was written for seed "
                         f"{record_seed!r}; this run has rl.seed={seed}")
      indices.append(index)
  if not indices:
    raise ValueError(f"rl.prompt_file={path!r} holds no prompts (the pass-rate band kept "
                     "none); widen --low/--high or use more --num_prompts")
  return indices
