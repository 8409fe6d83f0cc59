"""The task interface: an Example is a prompt, the completion a model should write, and the
final answer the grader checks."""
import abc
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str
  completion: str   # what the model writes after the prompt (worked trace + final answer)
  answer: str       # the final answer alone; graders compare against it


class Task(abc.ABC):
  """Subclasses implement `_make(rng)` and may override `extract_answer`."""
  name = "task"
  # Separates a worked trace from the final answer in completions.
  ANSWER_MARK = "="

  def example(self, seed: int, index: int, split: int = 0) -> Example:
    """Example `index` of stream `split` (0 train, 1 eval), a pure function of its inputs."""
    return self._make(np.random.default_rng([seed, split, index]))

  @abc.abstractmethod
  def _make(self, rng: np.random.Generator) -> Example:
    """One example drawn with `rng` (the only source of randomness)."""

  def extract_answer(self, completion: str) -> str:
    """The text after the last answer mark, up to the end of the line."""
    tail = completion.rsplit(self.ANSWER_MARK, 1)[-1] if self.ANSWER_MARK else completion
    return tail.split("\n", 1)[0].strip()

  def grade(self, example: Example, completion: str) -> float:
    """1.0 when the completion's final answer equals the example's answer, else 0.0."""
    return float(self.extract_answer(completion) == example.answer)
