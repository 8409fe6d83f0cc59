"""Verifiable synthetic tasks: deterministic examples from (seed, index) plus a grader.

The trainer packs them as its embedded default data; RL reuses the same tasks and graders
for rewards.
"""
from m1jax.tasks.arithmetic import Arithmetic
from m1jax.tasks.base import Example, Task
from m1jax.tasks.strings import Reversal, Sorting

TASKS: dict[str, type] = {"arithmetic": Arithmetic, "reversal": Reversal, "sort": Sorting}


def make_task(name: str, **kwargs) -> Task:
  """Builds a registered task; unknown names and options are ValueErrors."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
  try:
    return TASKS[name](**kwargs)
  except TypeError as e:
    raise ValueError(f"task {name!r}: bad options {kwargs}: {e}") from None


__all__ = ["Arithmetic", "Example", "Reversal", "Sorting", "TASKS", "Task", "make_task"]
