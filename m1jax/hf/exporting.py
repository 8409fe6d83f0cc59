"""m1jax params -> an HF checkpoint directory (sharded safetensors, index, config.json).

`write_hf_checkpoint` pulls one param at a time from a source (in-memory params, a converted
Orbax checkpoint, a trainer checkpoint) and streams its tensors into shards planned up
front. Sources that read slices (checkpoints on disk) are read one expert, or one 64 MB row
block of the head/embedding, at a time, so the working set does not grow with the model;
in-memory params are sliced the same way. Everything is written into a staging directory that is renamed
into place at the end.
"""
from __future__ import annotations

import math
import os
import shutil
from typing import Any, Optional, Protocol

import numpy as np

from m1jax.config import ModelConfig
from m1jax.hf import keys
from m1jax.hf.dialects import check_dialect, hf_config_from_model_config
from m1jax.hf.outputs import check_output_dir, copy_tokenizer, publish, write_json
from m1jax.hf.progress import Progress, release_free_memory
from m1jax.hf.safetensors_io import (FLOAT_DTYPES, INDEX_FILE, Entry, ShardWriter,
                                     parse_size, plan_shards, shard_names)

DEFAULT_MAX_SHARD_SIZE = "5GB"
# Largest transposed piece made at once (the [V, M] head is written in row blocks).
BLOCK_BYTES = 64 << 20


class ParamSource(Protocol):
  """Anything that can hand out the m1jax params of one model, one at a time."""
  config: ModelConfig

  def get(self, param: keys.Param) -> np.ndarray:
    """The param (of its layer, unstacked) as a numpy array in any float dtype. A source
    may also define get_slice(param, index) -> param[index], read without the rest (the
    exporter then reads one expert, or one row block of the head, at a time)."""


class TreeSource:
  """Params held in memory, in the model's layout (jax or numpy leaves)."""

  def __init__(self, config: ModelConfig, params: Any):
    self.config, self.params = config, params

  def get(self, param: keys.Param) -> np.ndarray:
    path, index = keys.param_location(self.config, param)
    node = self.params
    for name in path:
      if name not in node:
        raise KeyError(f"params have no {'/'.join(path)} (for {param.name()})")
      node = node[name]
    value = np.asarray(node)
    return value if index is None else value[index]


def _tensors(source: ParamSource, param: keys.Param, cfg: ModelConfig):
  """For each HF tensor of `param`, an iterator of its row blocks, read lazily. A source
  that reads slices (a checkpoint on disk) is asked for one expert, or one BLOCK_BYTES row
  block of the head and embedding, at a time; any other source for the param once."""
  rule, expected = param.rule, param.shape(cfg)

  def check(value, want, what=""):
    if tuple(value.shape) != tuple(want):
      raise ValueError(f"{param.name()}{what}: expected shape {tuple(want)}, found "
                       f"{tuple(value.shape)}")
    return value

  hf_shape = keys.shape(rule.hf_shape, cfg)
  rows = max(1, BLOCK_BYTES // (4 * math.prod(hf_shape[1:]) or 1))
  sliced = hasattr(source, "get_slice")
  if sliced and rule.per_expert:
    for e in range(expected[0]):
      piece = check(source.get_slice(param, (e,)), expected[1:], f" expert {e}")
      yield iter([keys.piece_to_hf(rule, piece, cfg)])
  elif sliced and keys.row_block_index(rule, cfg, 0, 1) is not None and rows < hf_shape[0]:
    def blocks():
      for r0 in range(0, hf_shape[0], rows):
        r1 = min(r0 + rows, hf_shape[0])
        block = source.get_slice(param, keys.row_block_index(rule, cfg, r0, r1))
        block = block.T if rule.transform == keys.TRANSPOSE else block
        yield check(np.ascontiguousarray(block), (r1 - r0,) + tuple(hf_shape[1:]), " rows")
    yield blocks()
  else:
    value = check(np.asarray(source.get(param)), expected)
    if rule.per_expert:  # one transposed expert at a time
      for piece in keys.from_param(rule, value, cfg):
        yield iter([piece])
    else:
      yield keys.hf_row_blocks(rule, value, cfg, BLOCK_BYTES)


def _export_dtype(config: ModelConfig, dtype: Optional[str]) -> np.dtype:
  import jax  # the bfloat16 name
  chosen = np.dtype(jax.numpy.dtype(dtype or config.param_dtype))
  if chosen not in FLOAT_DTYPES.values():
    raise ValueError(f"export dtype {dtype!r} is not one of float32, bfloat16, float16, "
                     "float64")
  return chosen


def write_hf_checkpoint(source: ParamSource, out_dir: str, *, dialect: str = "minimax_m1",
                        dtype: Optional[str] = None,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                        tokenizer_dir: Optional[str] = None, overwrite: bool = False,
                        config_extras: Optional[dict] = None, progress: bool = False) -> str:
  """Writes `source`'s params as an HF checkpoint in `out_dir`; returns out_dir.

  dialect: config.json keys, "minimax_m1" / "minimax_text_01" (MiniMax's remote code) or
    "minimax" (transformers' in-tree MiniMaxForCausalLM). The tensor names are the same.
  dtype: of the written weights (default: the config's param_dtype); routers stay float32.
  max_shard_size: bytes per safetensors file, an int or "5GB"-style; one shard is written as
    model.safetensors, more get model-0000i-of-0000N.safetensors and an index.
  tokenizer_dir: tokenizer files (tokenizer.json, ...) to copy beside the weights.
  config_extras: more config.json keys (e.g. bos_token_id / eos_token_id).
  """
  check_dialect(dialect)
  cfg = source.config
  weight_dtype = _export_dtype(cfg, dtype)
  hf_config = hf_config_from_model_config(cfg, dialect, weight_dtype.name)
  hf_config.update(config_extras or {})
  entries = [Entry(key, shape, np.dtype(np.float32) if d == "float32" else weight_dtype)
             for key, shape, d in keys.hf_tensors(cfg, dtype="bfloat16")]
  shards = plan_shards(entries, parse_size(max_shard_size))
  names = shard_names(len(shards))
  out_dir = os.path.abspath(os.fspath(out_dir))
  check_output_dir(out_dir, overwrite)
  if tokenizer_dir is not None and not os.path.isdir(tokenizer_dir):
    raise FileNotFoundError(f"tokenizer_dir {tokenizer_dir!r} is not a directory")

  staging = f"{out_dir}.tmp-export-{os.getpid()}"
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  bar = Progress(f"export {os.path.basename(out_dir)}", len(entries),
                 sum(e.nbytes for e in entries), enabled=progress)
  try:
    write_json(os.path.join(staging, "config.json"), hf_config)
    if tokenizer_dir is not None:
      copy_tokenizer(tokenizer_dir, staging)
    shard_of = {e.key: i for i, shard in enumerate(shards) for e in shard}
    writer, current = None, -1
    for param in keys.params(cfg):
      for key, blocks in zip(param.hf_keys(cfg), _tensors(source, param, cfg)):
        if shard_of[key] != current:
          if writer is not None:
            writer.close()
          current = shard_of[key]
          writer = ShardWriter(os.path.join(staging, names[current]), shards[current])
        entry = writer.next_entry
        writer.write_rows(key, (b.astype(entry.dtype, copy=False) for b in blocks))
        bar.advance(1, entry.nbytes)
        del blocks
      release_free_memory()
    writer.close()
    if len(shards) > 1:
      write_json(os.path.join(staging, INDEX_FILE), {
          "metadata": {"total_size": sum(e.nbytes for e in entries)},
          "weight_map": {e.key: names[i] for i, shard in enumerate(shards) for e in shard}})
    bar.close()
    publish(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return out_dir


def save_pretrained(config, params: Any, out_dir: str, *, dialect: str = "minimax_m1",
                    dtype: Optional[str] = None,
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                    tokenizer_dir: Optional[str] = None, overwrite: bool = False,
                    config_extras: Optional[dict] = None) -> str:
  """Writes in-memory params as an HF checkpoint directory (see write_hf_checkpoint).

  config: the ModelConfig (or the MiniMaxM1ForCausalLM) the params belong to; params in the
  model's layout (scanned or unrolled), as from init_params or from_pretrained.

  `transformers.MiniMaxForCausalLM.from_pretrained(out_dir)` loads dialect "minimax";
  `m1jax.from_pretrained(out_dir)` loads either, bit-identical.
  """
  config = getattr(config, "config", config)
  if not isinstance(config, ModelConfig):
    raise TypeError(f"save_pretrained: config must be a ModelConfig (or the model), got "
                    f"{type(config).__name__}")
  return write_hf_checkpoint(TreeSource(config, params), out_dir, dialect=dialect,
                             dtype=dtype, max_shard_size=max_shard_size,
                             tokenizer_dir=tokenizer_dir, overwrite=overwrite,
                             config_extras=config_extras)
