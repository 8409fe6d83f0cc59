"""pass@k prompt filtering (m1jax/rl/prompt_filter.py, experiments/rl_filter_data.py): each
prompt's samples are graded against that prompt (the last batch's padding not counted), the
band is strict, the file is written atomically and read back with its seed checked, the RL
loop's prompt indices come from it, and bad input is refused naming the flag."""
import collections
import json
import os

import numpy as np
import pytest

from configs import common
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.rl.config import resolve
from m1jax.rl.prompt_filter import (check_band, in_band, pass_rates, read_prompt_indices,
                                    step_prompt_indices, write_jsonl_atomic)
from m1jax.tasks import make_task
from m1jax.train.data import ByteTokenizer
from tests.helpers import random_params, tiny_config


class _QuotaTask:
  """The arithmetic task, but example i's first quota[i] graded samples pass: the pass
  rates are known whatever the (random) policy writes."""

  def __init__(self, quotas):
    self.inner = make_task("arithmetic", max_digits=1)
    self.examples = [self.inner.example(0, i) for i in range(len(quotas))]
    self.quota = {ex.prompt: q for ex, q in zip(self.examples, quotas)}
    self.graded = collections.Counter()

  def grade(self, example, completion):
    del completion
    self.graded[example.prompt] += 1
    return float(self.graded[example.prompt] <= self.quota[example.prompt])


def test_pass_rates_grade_each_prompts_own_samples():
  r = common.rl_config()
  r.max_new_tokens = 3
  s = resolve(r)
  config = tiny_config((0,), vocab_size=260)
  task = _QuotaTask([0, 2, 3])
  # Batches of 2 prompts: the second holds 1 prompt + 1 padding copy (not graded).
  rates = pass_rates(MiniMaxM1ForCausalLM(config), random_params(config, 0), ByteTokenizer(),
                     task, task.examples, s, k=3, batch_prompts=2, seed=0)
  np.testing.assert_allclose(rates, [0.0, 2 / 3, 1.0])
  assert set(task.graded.values()) == {3}
  np.testing.assert_array_equal(in_band(rates, 0.0, 0.9), [False, True, False])
  np.testing.assert_array_equal(in_band(rates, 0.0, 1.0), [False, True, False])  # strict
  np.testing.assert_array_equal(in_band(rates, -0.1, 1.0), [True, True, False])


@pytest.mark.parametrize("k,low,high,match", [
    (0, 0.0, 0.9, "k=0"), (True, 0.0, 0.9, "k=True"), (2.5, 0.0, 0.9, "k=2.5"),
    (10, 0.9, 0.9, "low=0.9, high=0.9"), (10, -0.1, 0.9, "low=-0.1"),
    (10, 0.0, 1.5, "high=1.5")])
def test_bad_band_is_refused(k, low, high, match):
  with pytest.raises(ValueError, match=match):
    check_band(k, low, high)


def test_prompt_file_round_trip_and_bad_files(tmp_path):
  path = str(tmp_path / "sub" / "kept.jsonl")
  records = [{"index": 1_000_007, "seed": 3, "pass_rate": 0.5},
             {"index": 1_000_002, "seed": 3, "pass_rate": 0.1}]
  write_jsonl_atomic(path, records)
  assert os.listdir(tmp_path / "sub") == ["kept.jsonl"]  # no temporary file left behind
  assert [json.loads(line) for line in open(path)] == records
  assert read_prompt_indices(path, 3) == [1_000_007, 1_000_002]
  with pytest.raises(ValueError, match="seed 3; this run has rl.seed=4"):
    read_prompt_indices(path, 4)
  with pytest.raises(FileNotFoundError, match="rl_filter_data"):
    read_prompt_indices(str(tmp_path / "missing.jsonl"), 3)
  write_jsonl_atomic(path, [])
  with pytest.raises(ValueError, match="holds no prompts"):
    read_prompt_indices(path, 3)
  with open(path, "w") as f:
    f.write('{"index": 5, "seed": 3}\n{"seed": 3}\n')
  with pytest.raises(ValueError, match="line 2: not a prompt record"):
    read_prompt_indices(path, 3)


def test_rl_steps_cycle_through_the_kept_prompts():
  r = common.rl_config()
  r.prompts_per_step = 3
  s = resolve(r)
  assert step_prompt_indices(s, 2) == [s.prompt_offset + i for i in (6, 7, 8)]
  kept = [11, 22, 33, 44]
  assert step_prompt_indices(s, 0, kept) == [11, 22, 33]
  assert step_prompt_indices(s, 1, kept) == [44, 11, 22]
