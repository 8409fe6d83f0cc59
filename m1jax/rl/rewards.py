"""Rewards: a task's grader on the decoded completion, plus DAPO's soft overlong penalty."""
import numpy as np

from m1jax.tasks import Task


def check_gradable(task) -> None:
  """A task is usable for RL only if it can grade a completion."""
  if not isinstance(task, Task) or not callable(getattr(task, "grade", None)):
    raise ValueError(f"RL needs a task with a grader (m1jax.tasks.Task.grade); got "
                     f"{type(task).__name__}")


def task_rewards(task, examples, texts) -> np.ndarray:
  """[N] float32: task.grade(example, text) per row (1 = right final answer)."""
  if len(examples) != len(texts):
    raise ValueError(f"task_rewards: {len(examples)} examples but {len(texts)} completions")
  return np.asarray([task.grade(ex, text) for ex, text in zip(examples, texts)], np.float32)


def soft_overlong_penalty(lengths_N, max_len: int, buffer: int, factor: float = 1.0):
  """DAPO Eq. 13 in TOKENS: 0 up to max_len - buffer, then linearly down to -factor at
  max_len, and -factor beyond. buffer 0 = off (all zeros)."""
  lengths = np.asarray(lengths_N, np.float32)
  if buffer <= 0:
    return np.zeros_like(lengths)
  if buffer > max_len:
    raise ValueError(f"overlong buffer {buffer} exceeds the max length {max_len}")
  start = max_len - buffer
  penalty = np.where(lengths <= start, 0.0, (start - lengths) / buffer)
  return (factor * np.maximum(penalty, -1.0)).astype(np.float32)
