"""The RL run's inputs: SFT checkpoint compatibility, the task, the entry point's config;
and (slow) a short SFT + RL run that raises the reward."""
import json
import os

import pytest

from configs import tiny_rl
from m1jax.rl import loop


def test_sft_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, monkeypatch):
  config = tiny_rl.get_config("runlocal")
  other = tiny_rl.get_config()   # the full tiny model: other widths
  from m1jax.config import ModelConfig
  from m1jax.model import MiniMaxM1ForCausalLM
  import m1jax.train.checkpointing as checkpointing
  sft_model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(other.model.to_dict()))
  monkeypatch.setattr(checkpointing, "restore_trained_params",
                      lambda path: (other, sft_model, {}))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(ValueError, match="incompatible config.*hidden_size"):
    loop.load_sft_params(config, str(tmp_path))


def test_missing_sft_checkpoint_says_how_to_make_one(tmp_path):
  with pytest.raises(FileNotFoundError, match="experiments.train"):
    loop.load_sft_params(tiny_rl.get_config("runlocal"), str(tmp_path))


def test_task_without_grader_is_a_clear_error():
  config = tiny_rl.get_config("runlocal")
  config.data.source = "text"
  with pytest.raises(ValueError, match="task with a grader"):
    loop.rl_task(config)
  config.data.source, config.data.task = "task", "poetry"
  with pytest.raises(ValueError, match="task with a grader"):
    loop.rl_task(config)


def test_presets_as_config_variants():
  from m1jax.rl.config import resolve
  assert resolve(tiny_rl.get_config("algorithm=dapo").rl).policy_loss == "ppo_clip"
  with pytest.raises(ValueError, match="unknown preset"):
    resolve(tiny_rl.get_config("algorithm=ppo").rl)


@pytest.mark.slow
def test_short_rl_run_raises_the_reward(tmp_path):
  """SFT a small model to partial accuracy on 1-digit addition, then CISPO: the mean
  rollout reward of the last steps beats that of the first steps, and the run resumes.

  Compiling dominates (SFT step, sampler, RL update: ~20 s each on CPU): no SFT eval, no
  trainer log-prob recompute (mismatch checks), one RL checkpoint; the resumed run reuses
  the first run's compiled programs (loop._rl_step is memoised, generate's are shape-keyed)."""
  from m1jax.train import train_and_evaluate
  config = tiny_rl.get_config("runlocal")
  config.data.task_options.arithmetic.max_digits = 1
  t = config.train
  t.num_steps, t.batch_size, t.seq_len, t.eval_every, t.checkpoint_every = 150, 8, 32, 150, 150
  t.eval_batches, t.eval_examples, t.plot, t.tensorboard = 0, 0, False, False
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 10
  sft = str(tmp_path / "sft")
  train_and_evaluate(config, sft)
  r = config.rl
  # lr 1e-3 drove the reward down (0.36 -> 0.13 over 16 steps): Adam's sign-like steps on
  # noisy policy gradients; 1e-4 is the largest that did not in a probe.
  r.init_checkpoint, r.num_steps, r.prompts_per_step, r.num_generations = sft, 16, 8, 8
  r.num_minibatches, r.max_new_tokens, r.seq_len, r.learning_rate = 4, 16, 24, 1e-4
  r.eval_every, r.eval_examples, r.checkpoint_every, r.plot = 100, 0, 16, False
  r.mismatch_check_every = 0
  work = str(tmp_path / "rl")
  summary = loop.train_rl(config, work, verbose=False)
  assert summary["step"] == 16
  with open(os.path.join(work, "metrics.jsonl")) as f:
    rewards = [json.loads(line)["train/reward/mean"] for line in f
               if "train/reward/mean" in line]
  first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
  assert 0.0 < first < 0.95, f"SFT should be partially right, got {first}"
  assert last > first, rewards
  # Resume: a longer run continues from step 16.
  r.num_steps = 17
  resumed = loop.train_rl(config, work, verbose=False)
  assert (resumed["start_step"], resumed["step"]) == (16, 17)
