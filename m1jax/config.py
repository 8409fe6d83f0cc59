"""ModelConfig: the frozen, validated description of a MiniMax-M1-style model.

It mirrors `config.model` of an ml_collections config field by field, and can also be built
from a Hugging Face `config.json` in either key dialect (docs/MODEL.md §8.3); the dialects
themselves (reading and writing) live in m1jax/hf/dialects.py.
Modules receive a ModelConfig and nothing else.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

# Attention type codes, as in the remote code's `attn_type_list`.
LINEAR_ATTENTION = 0
FULL_ATTENTION = 1
# MoE dispatch (m1jax/layers/moe.py; the sorted ones name an m1jax/ops/grouped_matmul.py impl).
MOE_IMPLS = ("auto", "ragged", "chunked", "megablox", "dense")
# Token exchange of expert parallelism (m1jax/layers/moe_ep.py).
MOE_ALL_TO_ALLS = ("auto", "ragged", "padded")
# Softmax attention implementations (m1jax/ops/attention_impl.py).
ATTENTION_IMPLS = ("auto", "xla", "blockwise", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyper-parameters of the hybrid lightning/softmax MoE decoder.

  Names follow the remote-code config.json where one exists; see docs/MODEL.md §3.1 for the
  released values.
  """
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  intermediate_size: int
  num_local_experts: int
  num_experts_per_tok: int
  # One code per layer: 0 = lightning (linear) attention, 1 = softmax attention.
  attn_type_list: tuple[int, ...]
  # Partial NeoX RoPE: only the first `rotary_dim` dims of each softmax q/k head rotate.
  rotary_dim: int
  rope_theta: float = 10_000_000.0
  max_position_embeddings: int = 10_240_000
  # DeepNorm residual weights: out = alpha * h + beta * f(h) (docs/MODEL.md §4.3).
  layernorm_full_attention_alpha: float = 1.0
  layernorm_full_attention_beta: float = 1.0
  layernorm_linear_attention_alpha: float = 1.0
  layernorm_linear_attention_beta: float = 1.0
  layernorm_mlp_alpha: float = 1.0
  layernorm_mlp_beta: float = 1.0
  # True: the residual branch carries the normed input (the released weights). False: raw x.
  postnorm: bool = True
  rms_norm_eps: float = 1e-5
  # The lightning output norm uses the remote code's class default, not rms_norm_eps.
  lightning_norm_eps: float = 1e-6
  # Chunk length of the chunked lightning operator; any value gives the same math.
  block_size: int = 256
  router_aux_loss_coef: float = 0.001
  tie_word_embeddings: bool = False
  initializer_range: float = 0.02
  # --- implementation choices (not part of the checkpoint) ---
  dtype: str = "float32"            # activations / matmul inputs
  param_dtype: str = "float32"      # stored parameters (the router is always float32)
  lm_head_fp32: bool = True         # LM head matmul in float32 (M1 report §3.2)
  # MoE dispatch: sorted tokens through a grouped matmul, "auto" (the platform's fastest:
  # megablox on TPU, ragged on GPU, chunked on CPU), "ragged" (jax.lax.ragged_dot), "chunked"
  # (expert-aligned chunks, one batched matmul), "megablox" (TPU Pallas kernel); or "dense"
  # (every expert on every token: the reference).
  moe_impl: str = "auto"
  # Expert parallelism (a mesh `expert` axis > 1): "ragged" (dropless ragged_all_to_all, TPU),
  # "padded" (all_to_all with a fixed capacity per (device, expert); drops are counted) or
  # "auto" (ragged when lowering for TPU, else padded).
  moe_all_to_all: str = "auto"
  # Padded exchange: capacity per (device, expert) = factor * local tokens * top_k / experts,
  # capped at the local tokens; any factor >= experts / top_k never drops.
  moe_capacity_factor: float = 2.0
  lightning_impl: str = "auto"      # forwarded to m1jax.ops.lightning_attention(impl=...)
  # Softmax attention: "xla" (fp32 [B,H,T,S] logits), "blockwise" (pure-JAX flash), "cudnn"
  # (GPU), "splash" (TPU), "auto" (splash/cudnn where they fit, else blockwise).
  attention_impl: str = "auto"
  scan_layers: bool = True          # nn.scan over the repeating layer group when periodic
  remat: bool = False               # rematerialise each decoder layer in the backward pass
  # What remat keeps: a jax.checkpoint_policies name (e.g. "dots_with_no_batch_dims_saveable").
  remat_policy: str = "nothing_saveable"

  def __post_init__(self):
    object.__setattr__(self, "attn_type_list", tuple(self.attn_type_list))
    self.validate()

  # ---------------------------------------------------------------- validation
  def validate(self) -> None:
    def fail(field: str, why: str):
      raise ValueError(f"ModelConfig.{field}: {why}")

    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "intermediate_size",
                  "num_local_experts", "num_experts_per_tok", "block_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        fail(field, f"must be a positive int, got {value!r}")
    if len(self.attn_type_list) != self.num_hidden_layers:
      fail("attn_type_list", f"has {len(self.attn_type_list)} entries but "
           f"num_hidden_layers={self.num_hidden_layers}")
    for i, code in enumerate(self.attn_type_list):
      if code not in (LINEAR_ATTENTION, FULL_ATTENTION) or isinstance(code, bool):
        fail(f"attn_type_list[{i}]", f"unknown attention type {code!r}; expected "
             f"{LINEAR_ATTENTION} (linear) or {FULL_ATTENTION} (full/softmax)")
    if self.num_attention_heads % self.num_key_value_heads:
      fail("num_attention_heads", f"{self.num_attention_heads} is not divisible by "
           f"num_key_value_heads={self.num_key_value_heads}")
    if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
      fail("rotary_dim", f"must be even and in (0, head_dim={self.head_dim}], "
           f"got {self.rotary_dim}")
    if self.num_experts_per_tok > self.num_local_experts:
      fail("num_experts_per_tok", f"{self.num_experts_per_tok} exceeds "
           f"num_local_experts={self.num_local_experts}")
    if self.rope_theta <= 0:
      fail("rope_theta", f"must be positive, got {self.rope_theta}")
    for field in ("rms_norm_eps", "lightning_norm_eps"):
      if not getattr(self, field) > 0:
        fail(field, f"must be positive, got {getattr(self, field)}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        fail(field, f"unknown dtype {getattr(self, field)!r}; expected one of {DTYPES}")
    import jax  # Deferred: the config module stays importable without initialising jax.
    if not callable(getattr(jax.checkpoint_policies, self.remat_policy, None)):
      fail("remat_policy", f"{self.remat_policy!r} is not a jax.checkpoint_policies name")
    if self.moe_impl not in MOE_IMPLS:
      fail("moe_impl", f"unknown {self.moe_impl!r}; expected one of {MOE_IMPLS}")
    if self.moe_all_to_all not in MOE_ALL_TO_ALLS:
      fail("moe_all_to_all", f"unknown {self.moe_all_to_all!r}; expected one of "
           f"{MOE_ALL_TO_ALLS}")
    if isinstance(self.moe_capacity_factor, bool) or not (
        isinstance(self.moe_capacity_factor, (int, float)) and self.moe_capacity_factor > 0):
      fail("moe_capacity_factor", f"must be a number > 0, got {self.moe_capacity_factor!r}")
    if self.attention_impl not in ATTENTION_IMPLS:
      fail("attention_impl", f"unknown {self.attention_impl!r}; expected one of "
           f"{ATTENTION_IMPLS}")
    if self.tie_word_embeddings:
      fail("tie_word_embeddings", "MiniMax-M1 has an untied lm_head; tied embeddings are "
           "not supported")

  # ---------------------------------------------------------------- structure
  @property
  def layer_period(self) -> int:
    """Smallest p dividing the depth such that attn_type_list repeats every p layers."""
    types, n = self.attn_type_list, self.num_hidden_layers
    for p in range(1, n + 1):
      if n % p == 0 and all(types[i] == types[i % p] for i in range(n)):
        return p
    return n

  @property
  def is_scanned(self) -> bool:
    """Scan over groups only when that actually repeats something."""
    return self.scan_layers and self.num_hidden_layers // self.layer_period > 1

  # ---------------------------------------------------------------- constructors
  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a plain mapping (e.g. `config.model.to_dict()`); unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"ModelConfig: unknown keys {unknown}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.name not in values)
    if missing:
      raise ValueError(f"ModelConfig: missing required keys {missing}")
    return cls(**dict(values))

  @classmethod
  def from_hf_dict(cls, hf: Mapping[str, Any], **overrides) -> "ModelConfig":
    """Builds from a parsed HF config.json (remote or in-tree dialect)."""
    # Imported here: m1jax.hf imports this module.
    from m1jax.hf.dialects import hf_config_to_fields
    return cls.from_dict({**hf_config_to_fields(hf), **overrides})

  @classmethod
  def from_hf_json(cls, path: str | os.PathLike, **overrides) -> "ModelConfig":
    with open(path) as f:
      return cls.from_hf_dict(json.load(f), **overrides)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["attn_type_list"] = list(self.attn_type_list)
    return d


def lightning_slopes(num_heads: int, num_layers: int) -> "list[list[float]]":
  """Per-layer, per-head decay rates s_{l,h} (docs/MODEL.md §6.2), as a [L][H] nested list.

  s_h are the official ALiBi slopes (with the standard interpolation when H is not a power
  of two) and the layer factor is 1 - l/(L-1) + 1e-5 over the GLOBAL layer index.
  """
  def power_of_two_slopes(n: int) -> list[float]:
    start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
    return [start * start**i for i in range(n)]

  def alibi(n: int) -> list[float]:
    if math.log2(n).is_integer():
      return power_of_two_slopes(n)
    p = 2 ** math.floor(math.log2(n))
    return power_of_two_slopes(p) + alibi(2 * p)[0::2][: n - p]

  base = alibi(num_heads)
  # A one-layer model would divide by zero in the remote formula; treat it as layer 0.
  denom = max(num_layers - 1, 1)
  return [[s * (1.0 - layer / denom + 1e-5) for s in base] for layer in range(num_layers)]
