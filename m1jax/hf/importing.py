"""HF checkpoint -> m1jax params: the import plan (checked from file headers before any
tensor is read) and `from_pretrained`.

`plan_import` matches the key table (m1jax/hf/keys.py) against a checkpoint's inventory and
raises one CheckpointError naming every missing, unexpected, wrong-shape or unconvertible
tensor (key, shape, file). `read_param` then reads one param at a time: the per-expert
tensors of a layer are read one by one into the stacked [E, ...] array.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from m1jax.config import LINEAR_ATTENTION, ModelConfig
from m1jax.hf import keys
from m1jax.hf.dialects import model_config_from_hf
from m1jax.hf.safetensors_io import (FLOAT_DTYPES, CheckpointError, TensorInfo, inventory,
                                     read_tensor)

# Row blocks of a big transposed tensor read at once (see _read_transposed).
BLOCK_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class Source:
  """Where one m1jax param comes from: its tensors (experts in order), and for transformers
  5's fused experts the rule and the slice of the fused tensor."""
  param: keys.Param
  tensors: tuple[TensorInfo, ...]
  fused: Optional[keys.FusedRule] = None
  index: Any = None

  @property
  def nbytes(self) -> int:
    if self.fused is not None:
      return self.tensors[0].nbytes // self.fused.parts
    return sum(t.nbytes for t in self.tensors)


def read_hf_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  """ModelConfig of the checkpoint directory `path` (its config.json, either dialect)."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"from_pretrained: {path!s} has no config.json")
  with open(config_path) as f:
    return model_config_from_hf(json.load(f), **overrides)


def plan_import(cfg: ModelConfig, tensors: dict[str, TensorInfo]) -> list[Source]:
  """One Source per m1jax param, in checkpoint order; raises CheckpointError listing every
  problem if the checkpoint does not match `cfg`."""
  sources, used, missing, wrong, bad_dtype = [], set(), [], [], []

  def take(key: str, expected: tuple[int, ...]) -> Optional[TensorInfo]:
    info = tensors.get(key)
    if info is None:
      missing.append(f"{key!r} {expected}")
      return None
    used.add(key)
    if info.shape != expected:
      wrong.append(f"tensor {key!r} in {os.path.basename(info.file)}: expected shape "
                   f"{expected}, found {info.shape}")
    if info.dtype not in FLOAT_DTYPES:
      bad_dtype.append(f"tensor {key!r} {info.shape} in {os.path.basename(info.file)} has "
                       f"dtype {info.dtype}")
    return info

  for param in keys.params(cfg):
    l = param.layer
    fused_layer = l is not None and keys.FUSED_MARKER.format(l=l) in tensors
    if fused_layer and "/".join(param.path) in keys.FUSED_REPLACES:
      sources.append(_fused_source(cfg, param, take))
      continue
    expected = keys.shape(param.rule.hf_shape, cfg)
    infos = [take(key, expected) for key in param.hf_keys(cfg)]
    if all(i is not None for i in infos):
      sources.append(Source(param, tuple(infos)))
  for l in range(cfg.num_hidden_layers):
    if cfg.attn_type_list[l] == LINEAR_ATTENTION:
      used.update(k.format(l=l) for k in keys.RECOMPUTED_BUFFERS
                  if k.format(l=l) in tensors)
  extra = [tensors[k].describe() for k in sorted(set(tensors) - used)]

  problems = []
  if wrong:
    problems.append("; ".join(wrong))
  if bad_dtype:
    problems.append(f"{len(bad_dtype)} tensors cannot be converted to floating point "
                    f"weights (expected one of {sorted(FLOAT_DTYPES)}): {_preview(bad_dtype)}")
  if missing:
    problems.append(f"checkpoint is missing {len(missing)} tensors: {_preview(missing)}")
  if extra:
    problems.append(f"checkpoint has {len(extra)} unexpected tensors: {_preview(extra)}")
  if problems:
    raise CheckpointError("; ".join(problems))
  return sources


def _fused_source(cfg: ModelConfig, param: keys.Param, take) -> Optional[Source]:
  l, path = param.layer, param.path
  if path == keys.FUSED_ROUTER.param:
    info = take(keys.FUSED_ROUTER.key(l), keys.shape(keys.FUSED_ROUTER.hf_shape, cfg))
    return Source(keys.Param(keys.FUSED_ROUTER, l), (info,)) if info else None
  rule = next(r for r in keys.FUSED_RULES if r.param == path)
  info = take(rule.key(l), keys.shape(rule.hf_shape, cfg))
  if info is None:
    return None
  width = info.shape[1] // rule.parts
  index = (slice(None), slice(rule.part * width, (rule.part + 1) * width), slice(None))
  return Source(param, (info,), fused=rule, index=index)


def _preview(items: Sequence[str], n: int = 8) -> str:
  more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
  return ", ".join(items[:n]) + more


def param_dtype(cfg: ModelConfig, rule) -> np.dtype:
  """float32 for the router, else the config's param_dtype."""
  return np.dtype(np.float32) if rule.fp32 else np.dtype(jax.numpy.dtype(cfg.param_dtype))


def read_param(source: Source, cfg: ModelConfig) -> np.ndarray:
  """Reads and transforms one param, in its m1jax dtype."""
  dtype = param_dtype(cfg, source.param.rule)
  if source.fused is not None:
    x = read_tensor(source.tensors[0], source.index)
    return keys.fused_to_param(source.fused, x).astype(dtype, copy=False)
  out = np.empty(source.param.shape(cfg), dtype)
  rule = source.param.rule
  if rule.per_expert:
    for e, info in enumerate(source.tensors):
      keys.to_param(rule, [read_tensor(info)], cfg, out=out[e:e + 1])
  elif len(source.tensors[0].shape) == 2 and source.tensors[0].nbytes > BLOCK_BYTES:
    _read_in_row_blocks(source.tensors[0], rule.transform == keys.TRANSPOSE, out)
  else:
    keys.to_param(rule, [read_tensor(source.tensors[0])], cfg, out=out)
  return out


def _read_in_row_blocks(info: TensorInfo, transpose: bool, out: np.ndarray) -> None:
  """A big 2-D tensor (the [V, M] head and embedding) into its param, BLOCK_BYTES of rows
  at a time: otherwise it would exist twice, as read and as the (transposed, cast) param."""
  rows, cols = info.shape
  target = out.reshape(cols, rows) if transpose else out.reshape(rows, cols)
  step = max(1, BLOCK_BYTES // max(1, cols * FLOAT_DTYPES[info.dtype].itemsize))
  for r0 in range(0, rows, step):
    r1 = min(r0 + step, rows)  # safetensors' slices do not clamp
    block = read_tensor(info, (slice(r0, r1), slice(None)))
    if transpose:
      target[:, r0:r1] = block.T
    else:
      target[r0:r1] = block


def from_pretrained(path: str | os.PathLike, **config_overrides):
  """Loads an HF MiniMax checkpoint directory -> (model, params).

  `config_overrides` replace ModelConfig fields, e.g. dtype="bfloat16", moe_impl="dense".
  `model.apply({"params": params}, input_ids_BT).logits` are the [B,T,V] logits. Params are
  jax arrays in `param_dtype`, the router in float32.
  """
  from m1jax.model import MiniMaxM1ForCausalLM  # the model imports flax; keep keys light
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"from_pretrained: {path!r} is not a directory")
  cfg = read_hf_config(path, **config_overrides)
  plan = plan_import(cfg, inventory(path))
  tree: dict = {}
  for source in plan:
    keys.put_param(tree, cfg, source.param, read_param(source, cfg))
  params = jax.tree.map(jax.numpy.asarray, tree)
  return MiniMaxM1ForCausalLM(cfg), params
