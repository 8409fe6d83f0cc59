"""Hugging Face -> m1jax: config.json and safetensors weights (docs/MODEL.md §8).

Reads a single `model.safetensors` or shards listed in `model.safetensors.index.json`, never
pickle files. Maps every tensor to the model's params: `[out, in]` weights are transposed to
`[in, out]` kernels and reshaped by head, the per-head interleaved qkv columns are kept in
their (head, {q,k,v}, dim) order, experts are stacked, and the router stays float32. Both
on-disk expert layouts are accepted: per-expert `block_sparse_moe.experts.{e}.w1/w2/w3`
(the release and what `save_pretrained` writes) and transformers 5's fused
`mlp.experts.gate_up_proj` / `down_proj`.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy reader)
import numpy as np
from safetensors import safe_open

from m1jax.config import LINEAR_ATTENTION, ModelConfig
from m1jax.layers.decoder import merge_layer_params
from m1jax.model import MiniMaxM1ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Buffers transformers saves for linear-attention layers; we recompute them from the config.
RECOMPUTED_BUFFERS = ("slope_rate", "query_decay", "key_decay", "diagonal_decay")


class CheckpointError(ValueError):
  """A checkpoint that does not match its config (missing/extra tensor, wrong shape, ...)."""


# ---------------------------------------------------------------------------- files
def read_hf_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"from_pretrained: {path!s} has no config.json")
  with open(config_path) as f:
    hf = json.load(f)
  # Default precision: the dtype the checkpoint declares, else float32.
  declared = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  defaults = {"dtype": declared, "param_dtype": declared}
  return ModelConfig.from_hf_dict(hf, **{**defaults, **overrides})


def safetensors_files(path: str | os.PathLike) -> list[str]:
  """The safetensors files of a checkpoint directory; refuses pickle-only checkpoints."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_path}: no 'weight_map' object")
    files = sorted(set(weight_map.values()))
    absent = [name for name in files if not os.path.isfile(os.path.join(path, name))]
    if absent:
      raise CheckpointError(f"{index_path} lists shards that do not exist: {absent}")
    return [os.path.join(path, name) for name in files]
  single = os.path.join(path, SINGLE_FILE)
  if os.path.isfile(single):
    return [single]
  pickles = sorted(n for n in os.listdir(path) if n.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise CheckpointError(
        f"{path!s} holds only pickle weights {pickles}; m1jax never unpickles files. Convert "
        "them to safetensors first (e.g. transformers' save_pretrained(..., "
        "safe_serialization=True)).")
  raise CheckpointError(f"{path!s} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    with safe_open(file, framework="numpy") as f:
      for key in f.keys():
        if key in tensors:
          raise CheckpointError(f"tensor {key!r} appears in more than one shard ({file})")
        tensors[key] = f.get_tensor(key)
  return tensors


# ---------------------------------------------------------------------------- key map
class _Reader:
  """Takes tensors by key, checking shapes and remembering what was consumed."""

  def __init__(self, tensors: dict[str, np.ndarray]):
    self.tensors = tensors
    self.used: set[str] = set()
    self.missing: list[str] = []

  def has(self, key: str) -> bool:
    return key in self.tensors

  def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if key not in self.tensors:
      self.missing.append(key)
      return None
    value = self.tensors[key]
    if tuple(value.shape) != tuple(shape):
      raise CheckpointError(f"tensor {key!r}: expected shape {tuple(shape)}, found "
                            f"{tuple(value.shape)}")
    self.used.add(key)
    return value


def _t(x: np.ndarray | None, *shape: int) -> np.ndarray | None:
  """[out, in] -> [in, out], reshaped to `shape`."""
  return None if x is None else np.ascontiguousarray(x.T).reshape(shape)


def _experts(r: _Reader, prefix: str, cfg: ModelConfig) -> dict[str, Any]:
  E, M, F = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
  fused = f"{prefix}.mlp.experts.gate_up_proj"
  if r.has(fused):  # transformers 5 in-memory names
    gate_up = r.take(fused, (E, 2 * F, M))
    down = r.take(f"{prefix}.mlp.experts.down_proj", (E, M, F))
    router = r.take(f"{prefix}.mlp.gate.weight", (E, M))
    w1 = None if gate_up is None else gate_up[:, :F].transpose(0, 2, 1)
    w3 = None if gate_up is None else gate_up[:, F:].transpose(0, 2, 1)
    w2 = None if down is None else down.transpose(0, 2, 1)
  else:  # per-expert names of the release / save_pretrained
    moe = f"{prefix}.block_sparse_moe"
    router = r.take(f"{moe}.gate.weight", (E, M))
    per = {name: [r.take(f"{moe}.experts.{e}.{name}.weight", shape) for e in range(E)]
           for name, shape in (("w1", (F, M)), ("w3", (F, M)), ("w2", (M, F)))}
    w1, w3, w2 = (None if any(x is None for x in per[n])
                  else np.stack([x.T for x in per[n]]) for n in ("w1", "w3", "w2"))
  return {"router": None if router is None else np.ascontiguousarray(router.T),
          "w1": w1, "w3": w3, "w2": w2}


def _layer(r: _Reader, l: int, cfg: ModelConfig) -> dict[str, Any]:
  M, H, K, D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  prefix = f"model.layers.{l}"
  a = f"{prefix}.self_attn"
  if cfg.attn_type_list[l] == LINEAR_ATTENTION:
    attn = {
        "qkv_proj": _t(r.take(f"{a}.qkv_proj.weight", (3 * H * D, M)), M, H, 3 * D),
        "output_gate": _t(r.take(f"{a}.output_gate.weight", (H * D, M)), M, H, D),
        "out_proj": _t(r.take(f"{a}.out_proj.weight", (M, H * D)), H, D, M),
        "norm": {"scale": _reshape(r.take(f"{a}.norm.weight", (H * D,)), H, D)},
    }
    for buffer in RECOMPUTED_BUFFERS:
      if r.has(f"{a}.{buffer}"):
        r.used.add(f"{a}.{buffer}")
  else:
    attn = {
        "q_proj": _t(r.take(f"{a}.q_proj.weight", (H * D, M)), M, H, D),
        "k_proj": _t(r.take(f"{a}.k_proj.weight", (K * D, M)), M, K, D),
        "v_proj": _t(r.take(f"{a}.v_proj.weight", (K * D, M)), M, K, D),
        "o_proj": _t(r.take(f"{a}.o_proj.weight", (M, H * D)), H, D, M),
    }
  return {
      "input_layernorm": {"scale": r.take(f"{prefix}.input_layernorm.weight", (M,))},
      "self_attn": attn,
      "post_attention_layernorm": {
          "scale": r.take(f"{prefix}.post_attention_layernorm.weight", (M,))},
      "block_sparse_moe": _experts(r, prefix, cfg),
  }


def _reshape(x: np.ndarray | None, *shape: int) -> np.ndarray | None:
  return None if x is None else x.reshape(shape)


def hf_tensors_to_params(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, Any]:
  """Maps HF tensor names to the m1jax param tree; every tensor must be used exactly once."""
  r = _Reader(tensors)
  V, M = cfg.vocab_size, cfg.hidden_size
  layers = [_layer(r, l, cfg) for l in range(cfg.num_hidden_layers)]
  params = {
      "embed_tokens": r.take("model.embed_tokens.weight", (V, M)),
      "norm": {"scale": r.take("model.norm.weight", (M,))},
      "lm_head": _t(r.take("lm_head.weight", (V, M)), M, V),
  }
  if r.missing:
    raise CheckpointError(f"checkpoint is missing {len(r.missing)} tensors: "
                          f"{_preview(r.missing)}")
  extra = sorted(set(tensors) - r.used)
  if extra:
    raise CheckpointError(f"checkpoint has {len(extra)} unexpected tensors: {_preview(extra)}")
  params["model"] = merge_layer_params(layers, cfg)
  return params


def _preview(keys: list[str], n: int = 8) -> str:
  more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
  return ", ".join(repr(k) for k in keys[:n]) + more


def _cast(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
  """param_dtype everywhere except the router, which stays float32."""
  pdtype = np.dtype(jax.numpy.dtype(cfg.param_dtype))

  def cast(path, x):
    is_router = any(getattr(k, "key", None) == "router" for k in path)
    return jax.numpy.asarray(x, np.float32 if is_router else pdtype)

  return jax.tree_util.tree_map_with_path(cast, params)


def from_pretrained(path: str | os.PathLike, **config_overrides
                    ) -> tuple[MiniMaxM1ForCausalLM, dict[str, Any]]:
  """Loads an HF MiniMax checkpoint directory -> (model, params).

  `config_overrides` replace ModelConfig fields, e.g. dtype="bfloat16", moe_impl="dense".
  `model.apply({"params": params}, input_ids_BT).logits` are the [B,T,V] logits.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"from_pretrained: {path!r} is not a directory")
  cfg = read_hf_config(path, **config_overrides)
  tensors = read_safetensors(safetensors_files(path))
  params = _cast(hf_tensors_to_params(tensors, cfg), cfg)
  return MiniMaxM1ForCausalLM(cfg), params
