"""Document sources: a synthetic task, or user text / JSONL files.

Each document is a dict of strings: {"prompt": ..., "completion": ...}. Loss falls on the
completion (and the EOS after it) only; plain text has an empty prompt, so it all counts.
"""
import glob
import json
import os

import grain

from m1jax.tasks import make_task

# Synthetic streams are indexed, not stored; this many indices never run out in practice.
_TASK_STREAM_LENGTH = 1 << 40


def data_task(data_config):
  """The task named by data.task, with its options from data.task_options[task]."""
  options = data_config.task_options.get(data_config.task)
  return make_task(data_config.task, **(options.to_dict() if options is not None else {}))


def task_documents(data_config, seed: int, split: int) -> grain.MapDataset:
  """Example i of the task's stream `split` (0 train, 1 eval) for every index i."""
  task = data_task(data_config)

  def document(index):
    ex = task.example(seed, int(index), split)
    return {"prompt": ex.prompt, "completion": ex.completion}

  return grain.MapDataset.range(_TASK_STREAM_LENGTH).map(document)


def _read_documents(paths: list[str], text_key: str) -> list[dict]:
  docs = []
  for path in paths:
    with open(path, encoding="utf-8") as f:
      if path.endswith((".jsonl", ".json")):
        for n, line in enumerate(f, 1):
          if not line.strip():
            continue
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            raise ValueError(f"data: {path}:{n} is not valid JSON ({e})") from None
          if "prompt" in record and "completion" in record:
            docs.append({"prompt": str(record["prompt"]),
                         "completion": str(record["completion"])})
          elif text_key in record:
            docs.append({"prompt": "", "completion": str(record[text_key])})
          else:
            raise ValueError(f"data: {path}:{n} has neither {text_key!r} nor "
                             "'prompt'+'completion' fields")
      else:
        # Plain text: blank-line-separated paragraphs are documents.
        docs.extend({"prompt": "", "completion": p.strip()}
                    for p in f.read().split("\n\n") if p.strip())
  return [d for d in docs if d["prompt"] or d["completion"]]


def text_documents(data_config, seed: int, split: int) -> grain.MapDataset:
  """User files (`data.paths`: a comma-separated list of globs), shuffled, repeated forever.

  Every `data.eval_every_nth` document is held out for evaluation.
  """
  patterns = [p.strip() for p in data_config.paths.split(",") if p.strip()]
  paths = sorted({p for pattern in patterns for p in glob.glob(os.path.expanduser(pattern))})
  if not paths:
    raise ValueError(f"data.paths={data_config.paths!r} matches no files")
  docs = _read_documents(paths, data_config.text_key)
  nth = data_config.eval_every_nth
  held_out = [d for i, d in enumerate(docs) if i % nth == nth - 1]
  train = [d for i, d in enumerate(docs) if i % nth != nth - 1]
  chosen = train if split == 0 else held_out
  if not chosen:
    raise ValueError(f"data: empty {'training' if split == 0 else 'eval'} set: "
                     f"{len(docs)} non-empty documents in {paths} "
                     f"(every {nth}th is held out for eval)")
  return grain.MapDataset.source(chosen).shuffle(seed=seed).repeat(None)


def documents(data_config, seed: int, split: int) -> grain.MapDataset:
  if data_config.source == "task":
    return task_documents(data_config, seed, split)
  if data_config.source == "text":
    return text_documents(data_config, seed, split)
  raise ValueError(f"data.source={data_config.source!r}; expected 'task' or 'text'")


