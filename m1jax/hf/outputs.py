"""Output directories that appear whole or not at all.

Exports and conversions write into a sibling staging directory and rename it into place at
the end, so a crash, a kill or a bad input never leaves something at the destination that
looks complete. The staging directory sits beside the destination (same filesystem, so the
rename is atomic).
"""
import json
import os
import shutil
from typing import Any


def check_output_dir(path: str, overwrite: bool, flag: str = "overwrite=True") -> None:
  """Refuses an existing non-empty `path` unless `overwrite`."""
  if os.path.isfile(path):
    raise FileExistsError(f"output {path!r} is a file, not a directory")
  if os.path.isdir(path) and os.listdir(path) and not overwrite:
    raise FileExistsError(f"output directory {path!r} exists and is not empty; pass {flag} "
                          "to replace it, or choose another directory")


def publish(staging: str, path: str) -> None:
  """Moves the finished `staging` directory to `path`, replacing what is there."""
  old = None
  if os.path.lexists(path):
    old = f"{path}.old-{os.getpid()}"
    os.rename(path, old)
  os.rename(staging, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str, value: Any) -> None:
  """Writes `path` through a temporary file, so readers see the old or the new contents."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


# Files a tokenizer directory may hold (transformers' and `tokenizers`' names).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")


def copy_tokenizer(src: str, dst: str) -> list[str]:
  """Copies the tokenizer files of `src` into `dst`; an error if there are none."""
  names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
  if not names:
    raise FileNotFoundError(f"tokenizer_dir {src!r} has none of {TOKENIZER_FILES}")
  for name in names:
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
  return names
