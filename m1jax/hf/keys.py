"""The HF <-> m1jax key table (docs/MODEL.md §8.2): one row per checkpoint tensor family.

A row names the HF key template (`{l}` layer, `{e}` expert), the m1jax param path, which
layers have it, the shapes on both sides in the dimension alphabet (V, M, H, K, D, E, F; a
leading integer multiplies: "3HD" = 3·H·D) and the transform between them:
  * TRANSPOSE: a torch `[out, in]` weight <-> an `[in, out]` kernel reshaped by head. The
    per-head interleaved qkv columns stay in their (head, {q,k,v}, dim) order: the reshape
    [M, 3HD] -> [M, H, 3D] never reorders them.
  * RESHAPE: the same values, reshaped (norm scales, the embedding).
  * per_expert: one tensor per expert on disk, stacked on a leading [E] axis in m1jax.
Routers are float32 in both directions. Layer params live in the scanned stack
(`model/groups/layer_j`, leading [L/p] axis, l = g·p + j) or the unrolled one
(`model/layers/layer_l`); `param_location` says which.

Everything here is shapes and names: `hf_tensors(cfg)` enumerates the keys and shapes of any
config (the 456B release included) without allocating a tensor.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Optional

import numpy as np

from m1jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig

TRANSPOSE, RESHAPE = "transpose", "reshape"
ALL_LAYERS = "all"
_LAYER = "model.layers.{l}."


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: str                       # key template
  param: tuple[str, ...]        # path under the model (global) or under a layer
  hf_shape: tuple[str, ...]     # one tensor on disk (one expert's, when per_expert)
  param_shape: tuple[str, ...]  # the m1jax param (of one layer), [E, ...] when per_expert
  transform: str                # TRANSPOSE or RESHAPE
  layers: Optional[object] = None  # None: global; ALL_LAYERS, LINEAR_ATTENTION, FULL_ATTENTION
  per_expert: bool = False
  fp32: bool = False            # stored and kept in float32 (the router)

  def applies_to(self, cfg: ModelConfig, layer: int) -> bool:
    return self.layers == ALL_LAYERS or self.layers == cfg.attn_type_list[layer]

  def key(self, layer: Optional[int] = None, expert: Optional[int] = None) -> str:
    return self.hf.format(l=layer, e=expert)


def _layer(hf, param, hf_shape, param_shape, transform, layers=ALL_LAYERS, **kw) -> Rule:
  return Rule(_LAYER + hf, tuple(param.split("/")), hf_shape, param_shape, transform,
              layers, **kw)


# The release's keys, and what save_pretrained writes (both dialects use them on disk).
RULES: tuple[Rule, ...] = (
    Rule("model.embed_tokens.weight", ("embed_tokens",), ("V", "M"), ("V", "M"), RESHAPE),
    _layer("input_layernorm.weight", "input_layernorm/scale", ("M",), ("M",), RESHAPE),
    _layer("self_attn.qkv_proj.weight", "self_attn/qkv_proj", ("3HD", "M"), ("M", "H", "3D"),
           TRANSPOSE, LINEAR_ATTENTION),
    _layer("self_attn.output_gate.weight", "self_attn/output_gate", ("HD", "M"),
           ("M", "H", "D"), TRANSPOSE, LINEAR_ATTENTION),
    _layer("self_attn.norm.weight", "self_attn/norm/scale", ("HD",), ("H", "D"), RESHAPE,
           LINEAR_ATTENTION),
    _layer("self_attn.out_proj.weight", "self_attn/out_proj", ("M", "HD"), ("H", "D", "M"),
           TRANSPOSE, LINEAR_ATTENTION),
    _layer("self_attn.q_proj.weight", "self_attn/q_proj", ("HD", "M"), ("M", "H", "D"),
           TRANSPOSE, FULL_ATTENTION),
    _layer("self_attn.k_proj.weight", "self_attn/k_proj", ("KD", "M"), ("M", "K", "D"),
           TRANSPOSE, FULL_ATTENTION),
    _layer("self_attn.v_proj.weight", "self_attn/v_proj", ("KD", "M"), ("M", "K", "D"),
           TRANSPOSE, FULL_ATTENTION),
    _layer("self_attn.o_proj.weight", "self_attn/o_proj", ("M", "HD"), ("H", "D", "M"),
           TRANSPOSE, FULL_ATTENTION),
    _layer("post_attention_layernorm.weight", "post_attention_layernorm/scale", ("M",),
           ("M",), RESHAPE),
    _layer("block_sparse_moe.gate.weight", "block_sparse_moe/router", ("E", "M"), ("M", "E"),
           TRANSPOSE, fp32=True),
    _layer("block_sparse_moe.experts.{e}.w1.weight", "block_sparse_moe/w1", ("F", "M"),
           ("E", "M", "F"), TRANSPOSE, per_expert=True),
    _layer("block_sparse_moe.experts.{e}.w2.weight", "block_sparse_moe/w2", ("M", "F"),
           ("E", "F", "M"), TRANSPOSE, per_expert=True),
    _layer("block_sparse_moe.experts.{e}.w3.weight", "block_sparse_moe/w3", ("F", "M"),
           ("E", "M", "F"), TRANSPOSE, per_expert=True),
    Rule("model.norm.weight", ("norm", "scale"), ("M",), ("M",), RESHAPE),
    Rule("lm_head.weight", ("lm_head",), ("V", "M"), ("M", "V"), TRANSPOSE),
)


@dataclasses.dataclass(frozen=True)
class FusedRule:
  """transformers 5's in-memory expert layout (read only): one [E, ...] tensor per layer
  whose `part` of `parts` equal slices along axis 1 is the param, last two axes swapped."""
  hf: str
  param: tuple[str, ...]
  hf_shape: tuple[str, ...]
  part: int = 0
  parts: int = 1
  fp32: bool = False
  layers: object = ALL_LAYERS
  per_expert: bool = False

  def key(self, layer: Optional[int] = None, expert: Optional[int] = None) -> str:
    return self.hf.format(l=layer)


# A layer whose `mlp.experts.gate_up_proj` exists is read with these instead of the
# per-expert rows and the router row (docs/MODEL.md §8.2).
FUSED_MARKER = _LAYER + "mlp.experts.gate_up_proj"
FUSED_RULES: tuple[FusedRule, ...] = (
    FusedRule(_LAYER + "mlp.experts.gate_up_proj", ("block_sparse_moe", "w1"),
              ("E", "2F", "M"), part=0, parts=2),
    FusedRule(_LAYER + "mlp.experts.gate_up_proj", ("block_sparse_moe", "w3"),
              ("E", "2F", "M"), part=1, parts=2),
    FusedRule(_LAYER + "mlp.experts.down_proj", ("block_sparse_moe", "w2"), ("E", "M", "F")),
)
# The router of a fused layer (a plain linear, as in RULES).
FUSED_ROUTER = _layer("mlp.gate.weight", "block_sparse_moe/router", ("E", "M"), ("M", "E"),
                      TRANSPOSE, fp32=True)
FUSED_REPLACES = ("block_sparse_moe/w1", "block_sparse_moe/w2", "block_sparse_moe/w3",
                  "block_sparse_moe/router")
# Buffers transformers may save for lightning layers; m1jax recomputes them from the config.
RECOMPUTED_BUFFERS = tuple(_LAYER + "self_attn." + name for name in (
    "slope_rate", "query_decay", "key_decay", "diagonal_decay"))


# -------------------------------------------------------------------- shapes
def dims(cfg: ModelConfig) -> dict[str, int]:
  return {"V": cfg.vocab_size, "M": cfg.hidden_size, "H": cfg.num_attention_heads,
          "K": cfg.num_key_value_heads, "D": cfg.head_dim, "E": cfg.num_local_experts,
          "F": cfg.intermediate_size}


_DIM = re.compile(r"^(\d*)([A-Z]+)$")


def shape(symbolic: tuple[str, ...], cfg: ModelConfig) -> tuple[int, ...]:
  """("3HD", "M") -> (3·H·D, M) for this config."""
  sizes, out = dims(cfg), []
  for term in symbolic:
    match = _DIM.match(term)
    if match is None:
      raise ValueError(f"bad symbolic dimension {term!r}")
    n = int(match.group(1) or 1)
    for letter in match.group(2):
      n *= sizes[letter]
    out.append(n)
  return tuple(out)


# -------------------------------------------------------------------- enumeration
@dataclasses.dataclass(frozen=True)
class Param:
  """One m1jax param of one layer (layer None: a global param) and the rule that makes it."""
  rule: Rule
  layer: Optional[int]

  @property
  def path(self) -> tuple[str, ...]:
    return self.rule.param

  def name(self) -> str:
    where = "" if self.layer is None else f"layer {self.layer}: "
    return where + "/".join(self.rule.param)

  def shape(self, cfg: ModelConfig) -> tuple[int, ...]:
    return shape(self.rule.param_shape, cfg)

  def hf_keys(self, cfg: ModelConfig) -> list[str]:
    if self.rule.per_expert:
      return [self.rule.key(self.layer, e) for e in range(cfg.num_local_experts)]
    return [self.rule.key(self.layer)]


def params(cfg: ModelConfig) -> Iterator[Param]:
  """Every m1jax param in checkpoint order: the embedding, layer 0..L-1, final norm, head."""
  globals_ = [r for r in RULES if r.layers is None]
  yield Param(globals_[0], None)
  for l in range(cfg.num_hidden_layers):
    for rule in RULES:
      if rule.layers is not None and rule.applies_to(cfg, l):
        yield Param(rule, l)
  for rule in globals_[1:]:
    yield Param(rule, None)


def hf_tensors(cfg: ModelConfig, dtype: str = "bfloat16") -> Iterator[tuple[str, tuple, str]]:
  """(key, shape, dtype) of every tensor of the canonical checkpoint of `cfg`; routers are
  float32, everything else `dtype`."""
  for param in params(cfg):
    hf_shape = shape(param.rule.hf_shape, cfg)
    for key in param.hf_keys(cfg):
      yield key, hf_shape, "float32" if param.rule.fp32 else dtype


def _template_regex(template: str) -> re.Pattern:
  return re.compile("^" + re.escape(template).replace(r"\{l\}", r"(?P<l>\d+)")
                    .replace(r"\{e\}", r"(?P<e>\d+)") + "$")


_RULE_REGEXES = tuple((_template_regex(rule.hf), rule) for rule in RULES)


def lookup(cfg: ModelConfig, key: str) -> Optional[tuple[Param, Optional[int]]]:
  """The (param, expert) an HF key of the canonical layout names in `cfg`, else None."""
  for regex, rule in _RULE_REGEXES:
    match = regex.match(key)
    if match is None:
      continue
    layer = int(match.group("l")) if "l" in match.groupdict() else None
    expert = int(match.group("e")) if "e" in match.groupdict() else None
    if layer is not None and not (0 <= layer < cfg.num_hidden_layers and
                                  rule.applies_to(cfg, layer)):
      return None
    if expert is not None and not 0 <= expert < cfg.num_local_experts:
      return None
    return Param(rule, layer), expert
  return None


def param_location(cfg: ModelConfig, param: Param) -> tuple[tuple[str, ...], Optional[int]]:
  """(path in the model's param tree, index on the leading scanned axis or None).

  Must agree with m1jax.layers.decoder.split_layer_params (tests/hf/test_keys.py checks it).
  """
  if param.layer is None:
    return param.path, None
  if cfg.is_scanned:
    p = cfg.layer_period
    return ("model", "groups", f"layer_{param.layer % p}") + param.path, param.layer // p
  return ("model", "layers", f"layer_{param.layer}") + param.path, None


# -------------------------------------------------------------------- transforms
def to_param(rule: Rule, tensors: list[np.ndarray], cfg: ModelConfig,
             out: Optional[np.ndarray] = None) -> np.ndarray:
  """HF tensor(s) -> the m1jax param (per-expert tensors in expert order). `out`, if given,
  receives the result (it must have the param's shape; dtypes are cast)."""
  target = shape(rule.param_shape, cfg)
  if out is None:
    out = np.empty(target, tensors[0].dtype)
  if rule.per_expert:
    for e, x in enumerate(tensors):
      out[e] = _forward(rule.transform, x, target[1:])
  else:
    out[...] = _forward(rule.transform, tensors[0], target)
  return out


def _forward(transform: str, x: np.ndarray, target: tuple[int, ...]) -> np.ndarray:
  return (x.T if transform == TRANSPOSE else x).reshape(target)


def from_param(rule: Rule, value: np.ndarray, cfg: ModelConfig) -> Iterator[np.ndarray]:
  """The m1jax param -> its HF tensor(s) (one per expert when per_expert), C-contiguous."""
  pieces = (value[e] for e in range(value.shape[0])) if rule.per_expert else (value,)
  for piece in pieces:
    yield piece_to_hf(rule, piece, cfg)


def piece_to_hf(rule: Rule, piece: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  """One HF tensor from its piece of the param (one expert's [M, F] slice, or the whole
  param when not per_expert), C-contiguous."""
  hf_shape = shape(rule.hf_shape, cfg)
  if rule.transform == TRANSPOSE:
    return np.ascontiguousarray(piece.reshape(hf_shape[::-1]).T)
  return np.ascontiguousarray(piece.reshape(hf_shape))


def row_block_index(rule: Rule, cfg: ModelConfig, r0: int, r1: int) -> Optional[tuple]:
  """The index into the param that holds rows r0:r1 of its HF tensor, when that is a plain
  slice (a 2-D head or embedding), else None."""
  hf_shape, param_shape = shape(rule.hf_shape, cfg), shape(rule.param_shape, cfg)
  if rule.per_expert or len(hf_shape) != 2:
    return None
  if rule.transform == TRANSPOSE and param_shape == hf_shape[::-1]:
    return (slice(None), slice(r0, r1))
  if rule.transform == RESHAPE and param_shape == hf_shape:
    return (slice(r0, r1), slice(None))
  return None


def hf_row_blocks(rule: Rule, value: np.ndarray, cfg: ModelConfig,
                  block_bytes: int) -> Iterator[np.ndarray]:
  """The HF tensor of a (non-expert) param as consecutive row blocks of at most
  `block_bytes`, each C-contiguous: a transposed [V, M] head never exists whole."""
  hf_shape = shape(rule.hf_shape, cfg)
  if rule.per_expert or rule.transform != TRANSPOSE:
    yield from from_param(rule, value, cfg)
    return
  columns = value.reshape(hf_shape[::-1])  # [in, out]: HF row r is column r
  rows = max(1, block_bytes // max(1, hf_shape[1] * value.dtype.itemsize))
  for r0 in range(0, hf_shape[0], rows):
    yield np.ascontiguousarray(columns[:, r0:r0 + rows].T)


def fused_to_param(rule: FusedRule, x: np.ndarray) -> np.ndarray:
  """A fused [E, A, B] slice (already cut to this rule's part) -> [E, B, A]."""
  return np.ascontiguousarray(x.transpose(0, 2, 1))


# -------------------------------------------------------------------- trees
def get_param(tree: dict, cfg: ModelConfig, param: Param):
  """The value of `param` in a param tree of the model's layout (a view for scanned ones)."""
  path, index = param_location(cfg, param)
  node = tree
  for name in path:
    if not isinstance(node, dict) or name not in node:
      raise KeyError(f"params have no {'/'.join(path)} (for {param.name()})")
    node = node[name]
  return node if index is None else node[index]


def put_param(tree: dict, cfg: ModelConfig, param: Param, value: np.ndarray) -> None:
  """Stores `value` as `param` in a (numpy) param tree of the model's layout, allocating a
  scanned leaf [L/p, ...] on first use, so no [L/p] stack is ever built by copying."""
  path, index = param_location(cfg, param)
  node = tree
  for name in path[:-1]:
    node = node.setdefault(name, {})
  if index is None:
    node[path[-1]] = value
    return
  if path[-1] not in node:
    groups = cfg.num_hidden_layers // cfg.layer_period
    node[path[-1]] = np.empty((groups,) + tuple(value.shape), value.dtype)
  node[path[-1]][index] = value
