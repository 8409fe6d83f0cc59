"""Streaming export of an m1jax checkpoint to an HF directory (experiments/export_hf.py).

Reads a converted checkpoint (convert_hf's output) or a trainer workdir, one param at a time,
params only, and streams the shards (m1jax/hf/exporting.py).
"""
from __future__ import annotations

import os
from typing import Optional

from m1jax.hf.dialects import DIALECTS, check_dialect
from m1jax.hf.exporting import DEFAULT_MAX_SHARD_SIZE, write_hf_checkpoint
from m1jax.hf.outputs import TOKENIZER_FILES, read_json

# config.json keys of a converted checkpoint's source carried into its export.
_CARRIED_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def open_source(checkpoint_dir: str, step: Optional[int] = None):
  """The ParamSource of a converted checkpoint or of a trainer workdir."""
  from m1jax.hf.converted import ConvertedSource, is_converted_checkpoint
  if is_converted_checkpoint(checkpoint_dir):
    if step is not None:
      raise ValueError(f"{checkpoint_dir} is a converted checkpoint (it has no steps); "
                       "leave --step out")
    return ConvertedSource(checkpoint_dir)
  if os.path.isdir(os.path.join(checkpoint_dir, "checkpoints")):
    from m1jax.hf.trainer_source import TrainerCheckpointSource
    return TrainerCheckpointSource(checkpoint_dir, step)
  raise FileNotFoundError(f"{checkpoint_dir!r} is neither a converted checkpoint (no "
                          "m1jax_converted.json) nor a trainer workdir (no checkpoints/)")


def export_to_hf(checkpoint_dir: str, out_dir: str, *, step: Optional[int] = None,
                 dialect: Optional[str] = None, dtype: Optional[str] = None,
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                 tokenizer_dir: Optional[str] = None, overwrite: bool = False,
                 progress: bool = True) -> str:
  """Writes the params of `checkpoint_dir` (latest step, or `step`) as an HF checkpoint.

  dialect: default the source's own for a converted checkpoint, else "minimax_m1". A
  converted checkpoint also passes on its tokenizer files and the token ids of its source
  config.json, unless tokenizer_dir names others.
  """
  if dialect is not None:
    check_dialect(dialect)  # before reading anything
  source = open_source(checkpoint_dir, step)
  extras = {}
  stored = os.path.join(checkpoint_dir, "config.json")
  if hasattr(source, "manifest") and os.path.isfile(stored):
    hf = read_json(stored)
    extras = {k: hf[k] for k in _CARRIED_KEYS if k in hf}
    if dialect is None and hf.get("model_type") in DIALECTS:
      dialect = hf["model_type"]
    if tokenizer_dir is None and any(
        os.path.isfile(os.path.join(checkpoint_dir, n)) for n in TOKENIZER_FILES):
      tokenizer_dir = checkpoint_dir
  return write_hf_checkpoint(source, out_dir, dialect=dialect or "minimax_m1", dtype=dtype,
                             max_shard_size=max_shard_size, tokenizer_dir=tokenizer_dir,
                             overwrite=overwrite, config_extras=extras, progress=progress)
