"""Synthetic tasks: deterministic from (seed, index, split), and graders that verify."""
import pytest

from m1jax.tasks import TASKS, make_task
from m1jax.tasks.arithmetic import trace


@pytest.mark.parametrize("name", sorted(TASKS))
def test_examples_are_deterministic_and_grade_correct(name):
  task = make_task(name)
  a = [task.example(3, i) for i in range(50)]
  assert a == [task.example(3, i) for i in range(50)]
  assert a != [task.example(4, i) for i in range(50)]
  assert a != [task.example(3, i, split=1) for i in range(50)]
  for ex in a:
    assert task.grade(ex, ex.completion) == 1.0
    assert task.grade(ex, ex.completion + "9") == 0.0


def test_arithmetic_trace_and_answer():
  assert trace(347, 85) == "7+5=12,4+8+1=13,3+1=4"
  assert trace(95, 7) == "5+7=12,9+1=10,1"
  task = make_task("arithmetic", min_digits=2, max_digits=4)
  for i in range(200):
    ex = task.example(0, i)
    a, b = map(int, ex.prompt[:-1].split("+"))
    assert ex.answer == str(a + b) and ex.completion.endswith(">=" + ex.answer)
    assert task.extract_answer(ex.completion) == ex.answer


def test_bad_task_options():
  with pytest.raises(ValueError, match="unknown task"):
    make_task("chess")
  with pytest.raises(ValueError, match="bad options"):
    make_task("sort", digits=3)
