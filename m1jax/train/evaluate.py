"""Periodic evaluation: held-out loss on packed eval batches and task accuracy.

Task accuracy (`train.eval_accuracy_mode`):
  * "generate" (default): greedy decoding with `m1jax.generate` from each prompt; exact match
    when the generated tokens equal the reference completion plus EOS, and the task's grader
    scores the generated text.
  * "teacher_forced": a prompt is solved when the argmax at every completion position, EOS
    included, is the reference token. That is the same exact-match number without a decode
    loop; the grader then sees the teacher-forced prediction.
"""
import itertools

import jax.numpy as jnp
import numpy as np

from m1jax.train.data.pipeline import encode_document, packed_dataset
from m1jax.train.data.sources import data_task
from m1jax.train.step import eval_step, predict_step


def heldout_loss(params, model, config, tokenizer) -> float:
  """Mean CE over the targets of `train.eval_batches` packed batches of the eval stream."""
  t = config.train
  ds = packed_dataset(config.data, tokenizer, seq_len=t.seq_len, batch_size=t.batch_size,
                      seed=t.seed, split=1)
  ce_sum, count = 0.0, 0
  for batch in itertools.islice(iter(ds), t.eval_batches):
    out = eval_step(params, {k: jnp.asarray(v) for k, v in batch.items()}, model=model)
    ce_sum, count = ce_sum + float(out["ce_sum"]), count + int(out["count"])
  return ce_sum / max(count, 1)


def task_accuracy(params, model, config, tokenizer) -> dict:
  """{"accuracy": exact match, "graded": grader score} over `train.eval_examples` eval-stream
  examples (task data only; empty dict for text data)."""
  data = config.data
  if data.source != "task" or config.train.eval_examples <= 0:
    return {}
  task = data_task(data)
  seq_len, batch = config.train.seq_len, config.train.batch_size
  examples = [task.example(config.train.seed, i, split=1)
              for i in range(config.train.eval_examples)]
  mode = config.train.get("eval_accuracy_mode", "generate")
  if mode == "generate":
    return _generated_accuracy(params, model, task, examples, tokenizer, seq_len, batch)
  if mode != "teacher_forced":
    raise ValueError(f"config.train.eval_accuracy_mode: unknown {mode!r}; expected "
                     "'generate' or 'teacher_forced'")
  exact, graded = 0, 0.0
  for start in range(0, len(examples), batch):
    chunk = examples[start:start + batch]
    rows = [encode_document({"prompt": e.prompt, "completion": e.completion}, tokenizer,
                            seq_len) for e in chunk]
    tokens = np.full((batch, seq_len), tokenizer.pad_id, np.int32)  # fixed shape: one compile
    for i, row in enumerate(rows):
      tokens[i, :len(row["tokens"])] = row["tokens"]
    predicted = np.asarray(predict_step(params, jnp.asarray(tokens), model=model))
    for i, (ex, row) in enumerate(zip(chunk, rows)):
      target_pos = np.nonzero(row["loss_mask"])[0]
      # The prediction for token t is made at position t-1.
      guess = predicted[i, target_pos - 1]
      exact += int(np.array_equal(guess, row["tokens"][target_pos]))
      eos = tokenizer.eos_id
      text_ids = guess if eos is None else guess[np.cumsum(guess == eos) == 0]
      graded += task.grade(ex, tokenizer.decode(text_ids))
  return {"accuracy": exact / len(examples), "graded_accuracy": graded / len(examples)}


def _generated_accuracy(params, model, task, examples, tokenizer, seq_len, batch) -> dict:
  """Greedy decoding with m1jax.generate; exact match against completion + EOS."""
  from m1jax.inference import generate  # the sampler is only needed here
  eos = tokenizer.eos_id
  exact, graded = 0, 0.0
  for start in range(0, len(examples), batch):
    chunk = examples[start:start + batch]
    rows = [encode_document({"prompt": e.prompt, "completion": e.completion}, tokenizer,
                            seq_len) for e in chunk]
    prompts = [row["tokens"][row["loss_mask"] == 0] for row in rows]
    targets = [row["tokens"][row["loss_mask"] == 1] for row in rows]
    # Exact match needs at most len(target) tokens: one more can only be a mismatch.
    out = generate(model, params, prompts, max_new_tokens=max(len(t) for t in targets),
                   temperature=0.0, eos_ids=() if eos is None else (eos,),
                   pad_id=tokenizer.pad_id)
    for i, (ex, target) in enumerate(zip(chunk, targets)):
      generated = out.tokens[i, :out.lengths[i]]
      exact += int(np.array_equal(generated, target))
      text_ids = generated if eos is None else generated[np.cumsum(generated == eos) == 0]
      graded += task.grade(ex, tokenizer.decode(text_ids))
  return {"accuracy": exact / len(examples), "graded_accuracy": graded / len(examples)}


def evaluate(params, model, config, tokenizer) -> dict:
  return {"loss": heldout_loss(params, model, config, tokenizer),
          **task_accuracy(params, model, config, tokenizer)}
