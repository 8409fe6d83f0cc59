"""Multi-digit addition with a short column-by-column worked trace.

  prompt      "347+85:"
  completion  "7+5=12,4+8+1=13,3+1=4>=432"
The trace names each column's digits (right to left) plus the carry and that column's sum;
the answer follows the last "=". Writing carries out gives a small model an algorithm to
follow instead of a lookup table.
"""
import numpy as np

from m1jax.tasks.base import Example, Task


class Arithmetic(Task):
  name = "arithmetic"
  ANSWER_MARK = ">="

  def __init__(self, min_digits: int = 1, max_digits: int = 3):
    if not 1 <= min_digits <= max_digits:
      raise ValueError(f"arithmetic: need 1 <= min_digits <= max_digits, got "
                       f"{min_digits}, {max_digits}")
    self.min_digits, self.max_digits = min_digits, max_digits

  def _operand(self, rng: np.random.Generator) -> int:
    digits = int(rng.integers(self.min_digits, self.max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10**(digits - 1), 10**digits))

  def _make(self, rng: np.random.Generator) -> Example:
    a, b = self._operand(rng), self._operand(rng)
    return Example(prompt=f"{a}+{b}:", completion=f"{trace(a, b)}>={a + b}", answer=str(a + b))


def trace(a: int, b: int) -> str:
  """Column sums right to left; a missing digit is left out, a carry is written as +1."""
  da, db = str(a)[::-1], str(b)[::-1]
  steps, carry = [], 0
  for i in range(max(len(da), len(db))):
    terms = [d[i] for d in (da, db) if i < len(d)] + (["1"] if carry else [])
    total = sum(int(t) for t in terms)
    steps.append("+".join(terms) + f"={total}")
    carry = total // 10
  if carry:
    steps.append("1")
  return ",".join(steps)
