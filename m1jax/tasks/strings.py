"""String tasks with an exact answer: reversal and digit sorting."""
import numpy as np

from m1jax.tasks.base import Example, Task

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


class Reversal(Task):
  """prompt "rev abcde:"  completion "edcba"."""
  name = "reversal"
  ANSWER_MARK = ""

  def __init__(self, min_len: int = 2, max_len: int = 8):
    if not 1 <= min_len <= max_len:
      raise ValueError(f"reversal: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    self.min_len, self.max_len = min_len, max_len

  def _make(self, rng: np.random.Generator) -> Example:
    n = int(rng.integers(self.min_len, self.max_len + 1))
    word = "".join(rng.choice(_LETTERS, n))
    return Example(prompt=f"rev {word}:", completion=word[::-1], answer=word[::-1])


class Sorting(Task):
  """prompt "sort 5281:"  completion "1258"."""
  name = "sort"
  ANSWER_MARK = ""

  def __init__(self, min_len: int = 2, max_len: int = 8):
    if not 1 <= min_len <= max_len:
      raise ValueError(f"sort: need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    self.min_len, self.max_len = min_len, max_len

  def _make(self, rng: np.random.Generator) -> Example:
    n = int(rng.integers(self.min_len, self.max_len + 1))
    digits = "".join(str(d) for d in rng.integers(0, 10, n))
    answer = "".join(sorted(digits))
    return Example(prompt=f"sort {digits}:", completion=answer, answer=answer)
