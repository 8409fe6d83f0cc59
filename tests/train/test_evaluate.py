"""Task accuracy by greedy generation (m1jax.generate) against teacher forcing."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import MiniMaxM1ForCausalLM, ModelConfig, init_params
from m1jax import inference
from m1jax.inference import GenerateOutput, generate
from m1jax.train import evaluate as evaluate_lib
from m1jax.train.data import ByteTokenizer
from m1jax.train.data.pipeline import encode_document
from m1jax.train.data.sources import data_task
from m1jax.train.evaluate import task_accuracy
from m1jax.train.step import predict_step
from tests.helpers import micro_train_config


@pytest.fixture(scope="module")
def setup():
  config = micro_train_config()
  config.train.eval_examples = 6
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  # Large random weights give confident, input-dependent argmaxes (not one repeated token).
  params = jax.tree.map(lambda x: x * 20.0 if x.ndim > 1 else x,
                        init_params(model, jax.random.key(3)))
  return config, model, params


def test_generation_follows_teacher_forcing_up_to_the_first_miss(setup):
  """Greedy decoding must pick the teacher-forced argmax at every step until the first
  position where that argmax misses the reference: the two evaluation modes then agree."""
  config, model, params = setup
  tok = ByteTokenizer()
  task = data_task(config.data)
  seq_len = config.train.seq_len
  for i in range(4):
    ex = task.example(0, i, split=1)
    row = encode_document({"prompt": ex.prompt, "completion": ex.completion}, tok, seq_len)
    prompt = row["tokens"][row["loss_mask"] == 0]
    target = row["tokens"][row["loss_mask"] == 1]
    padded = np.full((1, seq_len), tok.pad_id, np.int32)
    padded[0, :len(row["tokens"])] = row["tokens"]
    teacher = np.asarray(predict_step(params, jnp.asarray(padded), model=model))[0]
    teacher = teacher[np.nonzero(row["loss_mask"])[0] - 1]
    out = generate(model, params, [prompt], max_new_tokens=len(target), eos_ids=(tok.eos_id,),
                   pad_id=tok.pad_id)
    generated = out.tokens[0, :out.lengths[0]]
    misses = np.nonzero(teacher != target)[0]
    upto = (misses[0] if len(misses) else len(target) - 1) + 1
    np.testing.assert_array_equal(generated[:upto], teacher[:upto])


# ------------------------------------------------------------------ exact accuracy values
@dataclasses.dataclass(frozen=True)
class Answer:
  """How the stub model answers one eval example, and how each score must count it."""
  kind: str
  exact: bool   # the completion and EOS reproduced token for token
  graded: bool  # the grader's answer (after the last ">=", up to a newline) is right


# Example i of the eval stream gets ANSWERS[i]. Six examples in batches of four: the second
# batch is short (two pad rows), and both batches hold right and wrong rows. 2 of 6 exact and
# 4 of 6 graded: neither score is 1/2, so counting the misses instead of the hits shows.
ANSWERS = (
    Answer("right", exact=True, graded=True),
    Answer("last-answer-digit-wrong", exact=False, graded=False),
    Answer("first-trace-digit-wrong", exact=False, graded=True),
    Answer("newline-instead-of-eos", exact=False, graded=True),
    Answer("right", exact=True, graded=True),
    Answer("last-answer-digit-wrong", exact=False, graded=False),
)
PARAMS, MODEL = object(), object()  # handed through task_accuracy to the stub untouched


def _bump_digit(text: str, i: int) -> str:
  assert text[i].isdigit(), text
  return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]


class StubModel:
  """Answers each eval prompt as ANSWERS says, through both seams task_accuracy predicts
  with: `predict_step` (teacher forcing: the argmax at every position of a padded row) and
  `m1jax.inference.generate` (greedy decoding). Random weights get every row wrong, which
  cannot tell a correct accuracy from one that is always 0."""

  def __init__(self, config, tokenizer):
    self.tok = tokenizer
    task = data_task(config.data)
    examples = [task.example(config.train.seed, i, split=1)
                for i in range(config.train.eval_examples)]
    assert len(examples) == len(ANSWERS)
    # prompt tokens (BOS included) -> the tokens the model writes after it
    self.answers = {}
    for ex, answer in zip(examples, ANSWERS):
      row = encode_document({"prompt": ex.prompt, "completion": ex.completion}, tokenizer,
                            config.train.seq_len)
      assert row["loss_mask"][-1] == 1, "seq_len cut the completion: the test needs it whole"
      prompt = tuple(row["tokens"][row["loss_mask"] == 0])
      completion, end = ex.completion, [tokenizer.eos_id]
      if answer.kind == "last-answer-digit-wrong":
        completion = _bump_digit(completion, len(completion) - 1)
      elif answer.kind == "first-trace-digit-wrong":
        completion = _bump_digit(completion, 0)
      elif answer.kind == "newline-instead-of-eos":
        end = list(tokenizer.encode("\n"))
      else:
        assert answer.kind == "right", answer.kind
      written = np.concatenate([tokenizer.encode(completion), np.asarray(end, np.int32)])
      assert len(written) == len(row["tokens"]) - len(prompt)  # as long as the reference
      assert prompt not in self.answers, "two eval examples share a prompt"
      self.answers[prompt] = written
    self.calls = {"predict_step": 0, "generate": 0}

  def _answer_for(self, tokens) -> tuple[int, np.ndarray]:
    """(prompt length, written tokens) of the eval prompt that `tokens` starts with."""
    for prompt, written in self.answers.items():
      if tuple(tokens[:len(prompt)]) == prompt:
        return len(prompt), written
    raise AssertionError(f"not an eval prompt: {self.tok.decode(tokens)!r}")

  def predict_step(self, params, tokens_BT, *, model):
    self.calls["predict_step"] += 1
    assert (params, model) == (PARAMS, MODEL)
    tokens_BT = np.asarray(tokens_BT)
    predicted = np.full(tokens_BT.shape, self.tok.pad_id, np.int32)
    for b, row in enumerate(tokens_BT):
      if not row.any():  # a pad row filling the last, short batch
        continue
      n, written = self._answer_for(row)
      # The prediction for token t is made at position t - 1.
      predicted[b, n - 1:n - 1 + len(written)] = written
    return jnp.asarray(predicted)

  def generate(self, model, params, prompts, *, max_new_tokens, temperature, eos_ids, pad_id):
    self.calls["generate"] += 1
    assert (params, model) == (PARAMS, MODEL)
    assert temperature == 0.0 and tuple(eos_ids) == (self.tok.eos_id,)
    tokens = np.full((len(prompts), max_new_tokens), pad_id, np.int32)
    lengths = np.zeros(len(prompts), np.int32)
    for b, prompt in enumerate(prompts):
      n, written = self._answer_for(np.asarray(prompt))
      assert n == len(prompt)
      # Decoding stops after the first EOS, or at max_new_tokens.
      stop = np.nonzero(written == self.tok.eos_id)[0]
      out = (written[:stop[0] + 1] if len(stop) else written)[:max_new_tokens]
      tokens[b, :len(out)], lengths[b] = out, len(out)
    return GenerateOutput(tokens=tokens, log_probs=np.zeros(tokens.shape, np.float32),
                          lengths=lengths, prompt_lengths=np.asarray([len(p) for p in prompts]))


@pytest.mark.parametrize("mode", ["generate", "teacher_forced"])
def test_accuracy_counts_exactly_the_rows_the_model_gets_right(monkeypatch, mode):
  config = micro_train_config(batch_size=4, eval_examples=len(ANSWERS),
                              eval_accuracy_mode=mode)
  tok = ByteTokenizer()
  stub = StubModel(config, tok)
  monkeypatch.setattr(evaluate_lib, "predict_step", stub.predict_step)
  monkeypatch.setattr(inference, "generate", stub.generate)
  result = evaluate_lib.task_accuracy(PARAMS, MODEL, config, tok)
  # Both batches went through this mode's seam, and only through it.
  assert stub.calls == {"predict_step": 2 * (mode == "teacher_forced"),
                        "generate": 2 * (mode == "generate")}
  assert sum(a.exact for a in ANSWERS) == 2 and sum(a.graded for a in ANSWERS) == 4
  assert set(result) == {"accuracy", "graded_accuracy"}
  assert result["accuracy"] == 2 / 6, result
  assert result["graded_accuracy"] == 4 / 6, result


def test_teacher_forced_accuracy_runs_on_the_real_model_and_unknown_mode_is_an_error(setup):
  # The real predict_step behind the seam above (the real generate mode runs in
  # tests/train/test_train.py); random weights score 0, so only the range is checked here.
  config, model, params = setup
  config.train.eval_accuracy_mode = "teacher_forced"
  result = task_accuracy(params, model, config, ByteTokenizer())
  assert set(result) == {"accuracy", "graded_accuracy"}
  assert 0 <= result["accuracy"] <= result["graded_accuracy"] <= 1
  config.train.eval_accuracy_mode = "beam"
  with pytest.raises(ValueError, match="eval_accuracy_mode"):
    task_accuracy(params, model, config, ByteTokenizer())
