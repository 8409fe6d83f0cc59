"""Held-out evaluation of a policy: sampled avg@k at the RL temperature and greedy accuracy.

Prompts are the task's split-1 stream (never trained on by SFT or RL). The sampler seeds are
fixed per sample index, so successive evals (and runs of different methods) draw with the
same keys: differences between two evals are the policy's, not the dice's.
"""
import numpy as np

from m1jax.rl.rollout import FINISH_EOS, completion_text, encode_prompt, generate_rows

_EVAL_SALT = 0xE7A1


def eval_examples(task, s) -> list:
  return [task.example(s.seed, i, split=1) for i in range(s.eval_examples)]


def evaluate_policy(model, params, tokenizer, task, s, examples=None) -> dict:
  """{"pass@1_T1": mean reward of eval_samples samples per prompt at rl.temperature,
  "greedy_graded": grader score of the greedy completion, "greedy_exact": greedy completion
  equal to the reference trace + answer}. Empty when eval_examples is 0."""
  examples = eval_examples(task, s) if examples is None else examples
  if not examples:
    return {}
  prompts = [encode_prompt(tokenizer, ex.prompt) for ex in examples]
  sampled = []
  for k in range(s.eval_samples):
    out, _ = generate_rows(model, params, tokenizer, prompts, s,
                           seed=_EVAL_SALT * 1000 + k)
    sampled += [task.grade(ex, completion_text(tokenizer, out.tokens[i, :out.lengths[i]]))
                for i, ex in enumerate(examples)]
  out, finish = generate_rows(model, params, tokenizer, prompts, s, seed=0, temperature=0.0)
  graded, exact = [], []
  for i, ex in enumerate(examples):
    text = completion_text(tokenizer, out.tokens[i, :out.lengths[i]])
    graded.append(task.grade(ex, text))
    exact.append(float(text == ex.completion and finish[i] == FINISH_EOS))
  return {"pass@1_T1": float(np.mean(sampled)), "greedy_graded": float(np.mean(graded)),
          "greedy_exact": float(np.mean(exact))}
