"""HF `config.json` <-> ModelConfig fields, in both key dialects (docs/MODEL.md §8.3).

  * MiniMax's remote code (`model_type` "minimax_m1" / "minimax_text_01"): `attn_type_list`,
    `rotary_dim`, `layernorm_*_alpha/beta`, `postnorm`;
  * transformers' in-tree model (`model_type` "minimax"): `layer_types`, `rope_parameters`,
    `*_alpha_factor/*_beta_factor`, `block_size`.

`hf_config_to_fields` reads either; `hf_config_from_model_config` writes either.
"""
from __future__ import annotations

from typing import Any, Mapping

from m1jax.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig

_ATTN_TYPE_NAMES = {"linear_attention": LINEAR_ATTENTION, "full_attention": FULL_ATTENTION}
_ATTN_TYPE_CODES = {code: name for name, code in _ATTN_TYPE_NAMES.items()}

REMOTE_MODEL_TYPES = ("minimax_m1", "minimax_text_01")
IN_TREE_MODEL_TYPES = ("minimax",)
DIALECTS = REMOTE_MODEL_TYPES + IN_TREE_MODEL_TYPES
_ARCHITECTURES = {"minimax_m1": "MiniMaxM1ForCausalLM",
                  "minimax_text_01": "MiniMaxText01ForCausalLM",
                  "minimax": "MiniMaxForCausalLM"}
# (ModelConfig name, in-tree name) of the three DeepNorm sublayers.
_SUBLAYERS = (("full_attention", "full_attn"), ("linear_attention", "linear_attn"),
              ("mlp", "mlp"))


def check_dialect(dialect: str) -> str:
  if dialect not in DIALECTS:
    raise ValueError(f"unknown HF dialect {dialect!r}; expected one of {DIALECTS} "
                     "(remote code: minimax_m1 / minimax_text_01; transformers: minimax)")
  return dialect


# -------------------------------------------------------------------- reading
def _require(hf: Mapping[str, Any], key: str) -> Any:
  if key not in hf or hf[key] is None:
    raise ValueError(f"HF config: missing required key {key!r} "
                     f"(model_type={hf.get('model_type')!r})")
  return hf[key]


def _rope_from_hf(hf: Mapping[str, Any], head_dim: int) -> tuple[float, int]:
  """(rope_theta, rotary_dim) from either dialect."""
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", "default") not in ("default", None):
    raise ValueError(f"HF config: rope_parameters.rope_type={rope.get('rope_type')!r} "
                     "is not supported; only 'default' RoPE")
  # Both dialects' config classes default to 1e6 (Mixtral heritage).
  theta = rope.get("rope_theta", hf.get("rope_theta", 1_000_000.0))
  if hf.get("rotary_dim") is not None:
    rotary_dim = int(hf["rotary_dim"])
  else:
    factor = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    rotary_dim = int(round(head_dim * float(factor)))
  return float(theta), rotary_dim


def hf_config_to_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  """Maps an HF config.json dict to ModelConfig fields (docs/MODEL.md §8.3)."""
  model_type = hf.get("model_type")
  if model_type not in DIALECTS:
    raise ValueError(f"HF config: unknown model_type {model_type!r}; expected one of "
                     f"{DIALECTS}")
  hidden = int(_require(hf, "hidden_size"))
  heads = int(_require(hf, "num_attention_heads"))
  head_dim = int(hf.get("head_dim") or hidden // heads)
  theta, rotary_dim = _rope_from_hf(hf, head_dim)
  fields: dict[str, Any] = dict(
      vocab_size=int(_require(hf, "vocab_size")),
      hidden_size=hidden,
      num_hidden_layers=int(_require(hf, "num_hidden_layers")),
      num_attention_heads=heads,
      num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=head_dim,
      intermediate_size=int(_require(hf, "intermediate_size")),
      num_local_experts=int(_require(hf, "num_local_experts")),
      num_experts_per_tok=int(_require(hf, "num_experts_per_tok")),
      rotary_dim=rotary_dim,
      rope_theta=theta,
      max_position_embeddings=int(hf.get("max_position_embeddings") or 10_240_000),
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
      router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
      initializer_range=float(hf.get("initializer_range", 0.02)),
  )
  if hf.get("router_jitter_noise"):
    raise ValueError(f"HF config: router_jitter_noise={hf['router_jitter_noise']} is not "
                     "supported (MiniMax-M1 uses 0)")
  if model_type in REMOTE_MODEL_TYPES:
    if hf.get("shared_intermediate_size", 0):
      raise ValueError("HF config: shared_intermediate_size="
                       f"{hf['shared_intermediate_size']} (shared expert) is not supported; "
                       "no released checkpoint uses it")
    fields["attn_type_list"] = tuple(_require(hf, "attn_type_list"))
    fields["postnorm"] = bool(hf.get("postnorm", False))
    for kind, _ in _SUBLAYERS:
      for ab in ("alpha", "beta"):
        key = f"layernorm_{kind}_{ab}"
        fields[key] = float(hf.get(key, 1.0))
  else:
    layer_types = hf.get("layer_types")
    if layer_types is None:  # the in-tree default: full attention at even indices
      layer_types = ["full_attention" if i % 2 == 0 else "linear_attention"
                     for i in range(fields["num_hidden_layers"])]
    codes = []
    for i, name in enumerate(layer_types):
      if name not in _ATTN_TYPE_NAMES:
        raise ValueError(f"HF config: layer_types[{i}]={name!r} is not one of "
                         f"{sorted(_ATTN_TYPE_NAMES)}")
      codes.append(_ATTN_TYPE_NAMES[name])
    fields["attn_type_list"] = tuple(codes)
    fields["postnorm"] = True  # hard-coded in the in-tree model
    fields["block_size"] = int(hf.get("block_size", 256))
    for ours, theirs in _SUBLAYERS:
      for ab in ("alpha", "beta"):
        fields[f"layernorm_{ours}_{ab}"] = float(hf.get(f"{theirs}_{ab}_factor", 1.0))
  return fields


def model_config_from_hf(hf: Mapping[str, Any], **overrides) -> ModelConfig:
  """ModelConfig of a parsed config.json. Precision defaults to the dtype the file declares
  (`dtype`, or the older `torch_dtype`), else float32; `overrides` replace any field."""
  declared = hf.get("dtype") or hf.get("torch_dtype") or "float32"
  return ModelConfig.from_dict({**hf_config_to_fields(hf), "dtype": declared,
                                "param_dtype": declared, **overrides})


# -------------------------------------------------------------------- writing
def hf_config_from_model_config(cfg: ModelConfig, dialect: str, dtype: str) -> dict[str, Any]:
  """config.json contents for `cfg` in `dialect` ("minimax_m1", "minimax_text_01" or
  "minimax"); `dtype` is the dtype of the weights written beside it.

  Keys the dialect has no name for are left out: `block_size` in the remote dialect (a module
  constant there, and any value computes the same function), `lightning_norm_eps` in both.
  Refuses a config the dialect cannot express (the in-tree model is always post-norm).
  """
  check_dialect(dialect)
  hf: dict[str, Any] = {
      "architectures": [_ARCHITECTURES[dialect]],
      "model_type": dialect,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_hidden_layers,
      "num_attention_heads": cfg.num_attention_heads,
      "num_key_value_heads": cfg.num_key_value_heads,
      "head_dim": cfg.head_dim,
      "intermediate_size": cfg.intermediate_size,
      "num_local_experts": cfg.num_local_experts,
      "num_experts_per_tok": cfg.num_experts_per_tok,
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "router_aux_loss_coef": cfg.router_aux_loss_coef,
      "router_jitter_noise": 0.0,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "initializer_range": cfg.initializer_range,
      "hidden_act": "silu",
      "attention_dropout": 0.0,
      "sliding_window": None,
      "output_router_logits": False,
      "use_cache": True,
  }
  if dialect in REMOTE_MODEL_TYPES:
    hf.update(attn_type_list=list(cfg.attn_type_list), rotary_dim=cfg.rotary_dim,
              rope_theta=cfg.rope_theta, postnorm=cfg.postnorm, shared_intermediate_size=0,
              torch_dtype=dtype)
    for kind, _ in _SUBLAYERS:
      for ab in ("alpha", "beta"):
        hf[f"layernorm_{kind}_{ab}"] = getattr(cfg, f"layernorm_{kind}_{ab}")
    return hf
  if not cfg.postnorm:
    raise ValueError("dialect 'minimax' (transformers) is always post-norm; this config has "
                     "postnorm=False. Export it in the 'minimax_m1' dialect instead.")
  hf.update(
      layer_types=[_ATTN_TYPE_CODES[code] for code in cfg.attn_type_list],
      rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta,
                       "partial_rotary_factor": cfg.rotary_dim / cfg.head_dim},
      block_size=cfg.block_size, dtype=dtype)
  for ours, theirs in _SUBLAYERS:
    for ab in ("alpha", "beta"):
      hf[f"{theirs}_{ab}_factor"] = getattr(cfg, f"layernorm_{ours}_{ab}")
  return hf
