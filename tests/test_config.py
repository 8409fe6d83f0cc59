"""ModelConfig: the shipped configs, validation, layer periodicity and both HF dialects.

The 456B values are checked one by one against docs/MODEL.md §3.1 (not against the config file that
is also under test), and every HF key is given a distinct value somewhere, so a key that
lands in the wrong field cannot pass.
"""
import dataclasses
import importlib
import re

import pytest

from m1jax.config import ModelConfig
from tests.helpers import FULL, LINEAR, hf_config, require, tiny_config

# Fields that describe how we compute, not the checkpoint; HF configs cannot carry them.
IMPLEMENTATION_FIELDS = ("dtype", "param_dtype", "lm_head_fp32", "moe_impl", "lightning_impl",
                         "scan_layers", "remat")

# attn_type_list of the release, written out from docs/MODEL.md §3.1: softmax at 7, 15, ..., 79.
RELEASE_SOFTMAX_LAYERS = tuple(range(7, 80, 8))
RELEASE_ATTN_TYPES = [1 if l in RELEASE_SOFTMAX_LAYERS else 0 for l in range(80)]
RELEASE_ALPHA = 3.5565588200778455
# Four layers, so the validation cases below can make attn_type_list one too short or long.
BASE_TYPES = (0, 0, 0, 1)


def shipped(name: str) -> ModelConfig:
  module = importlib.import_module(f"configs.{name}")
  return ModelConfig.from_dict(module.get_config().model.to_dict())


def released_remote_config_json() -> dict:
  """MiniMax-M1's config.json as listed in docs/MODEL.md §3.1 (remote-code dialect)."""
  return {
      "architectures": ["MiniMaxM1ForCausalLM"],
      "attention_dropout": 0.0,
      "attn_type_list": list(RELEASE_ATTN_TYPES),
      "auto_map": {
          "AutoConfig": "configuration_minimax_m1.MiniMaxM1Config",
          "AutoModelForCausalLM": "modeling_minimax_m1.MiniMaxM1ForCausalLM",
      },
      "bos_token_id": None,
      "eos_token_id": None,
      "head_dim": 128,
      "hidden_act": "silu",
      "hidden_size": 6144,
      "initializer_range": 0.02,
      "intermediate_size": 9216,
      "layernorm_full_attention_alpha": RELEASE_ALPHA,
      "layernorm_full_attention_beta": 1.0,
      "layernorm_linear_attention_alpha": RELEASE_ALPHA,
      "layernorm_linear_attention_beta": 1.0,
      "layernorm_mlp_alpha": RELEASE_ALPHA,
      "layernorm_mlp_beta": 1.0,
      "max_position_embeddings": 10240000,
      "model_type": "minimax_m1",
      "num_attention_heads": 64,
      "num_experts_per_tok": 2,
      "num_hidden_layers": 80,
      "num_key_value_heads": 8,
      "num_local_experts": 32,
      "output_router_logits": False,
      "postnorm": True,
      "rms_norm_eps": 1e-05,
      "rope_theta": 10000000,
      "rotary_dim": 64,
      "router_aux_loss_coef": 0.001,
      "router_jitter_noise": 0.0,
      "shared_intermediate_size": 0,
      "shared_moe_mode": "sigmoid",
      "sliding_window": None,
      "tie_word_embeddings": False,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.45.2",
      "use_cache": True,
      "vocab_size": 200064,
  }


def released_in_tree_config_json() -> dict:
  """The same model in transformers' in-tree `minimax` dialect (docs/MODEL.md §8.3 key table)."""
  return {
      "architectures": ["MiniMaxForCausalLM"],
      "model_type": "minimax",
      "vocab_size": 200064,
      "hidden_size": 6144,
      "intermediate_size": 9216,
      "num_hidden_layers": 80,
      "num_attention_heads": 64,
      "num_key_value_heads": 8,
      "head_dim": 128,
      "layer_types": ["full_attention" if t else "linear_attention" for t in RELEASE_ATTN_TYPES],
      "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0,
                          "partial_rotary_factor": 0.5},
      "max_position_embeddings": 10240000,
      "full_attn_alpha_factor": RELEASE_ALPHA,
      "full_attn_beta_factor": 1.0,
      "linear_attn_alpha_factor": RELEASE_ALPHA,
      "linear_attn_beta_factor": 1.0,
      "mlp_alpha_factor": RELEASE_ALPHA,
      "mlp_beta_factor": 1.0,
      "block_size": 256,
      "num_local_experts": 32,
      "num_experts_per_tok": 2,
      "rms_norm_eps": 1e-05,
      "router_aux_loss_coef": 0.001,
      "router_jitter_noise": 0.0,
      "tie_word_embeddings": False,
      "initializer_range": 0.02,
      "dtype": "bfloat16",
  }


def with_implementation_of(config: ModelConfig, reference: ModelConfig) -> ModelConfig:
  return config.replace(**{f: getattr(reference, f) for f in IMPLEMENTATION_FIELDS})


# ------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("name", ["tiny", "small", "minimax_m1_456b"])
def test_shipped_config_builds_a_valid_model_config(name):
  config = shipped(name)
  assert config.num_hidden_layers == len(config.attn_type_list)
  # The shipped configs all follow the release's 7 lightning + 1 softmax group.
  assert config.layer_period == 8
  assert config.is_scanned == config.scan_layers


def test_456b_config_has_every_released_value():
  c = shipped("minimax_m1_456b")
  assert c.vocab_size == 200064
  assert c.hidden_size == 6144
  assert c.num_hidden_layers == 80
  assert len(c.attn_type_list) == 80
  assert [l for l, t in enumerate(c.attn_type_list) if t == 1] == list(RELEASE_SOFTMAX_LAYERS)
  assert set(c.attn_type_list) == {0, 1}
  assert c.attn_type_list[79] == 1
  assert c.num_attention_heads == 64
  assert c.num_key_value_heads == 8
  assert c.head_dim == 128
  assert c.rotary_dim == 64
  assert c.rope_theta == 1e7
  assert c.max_position_embeddings == 10_240_000
  assert c.num_local_experts == 32
  assert c.num_experts_per_tok == 2
  assert c.intermediate_size == 9216
  for kind in ("full_attention", "linear_attention", "mlp"):
    alpha = getattr(c, f"layernorm_{kind}_alpha")
    assert alpha == RELEASE_ALPHA
    assert abs(alpha - 160**0.25) < 1e-12, "DeepNet alpha (2 * 80) ** 0.25"
    assert getattr(c, f"layernorm_{kind}_beta") == 1.0
  assert c.postnorm is True
  assert c.rms_norm_eps == 1e-5
  assert c.lightning_norm_eps == 1e-6
  assert c.block_size == 256
  assert c.router_aux_loss_coef == 0.001
  assert c.tie_word_embeddings is False
  assert c.initializer_range == 0.02


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("changes, field", [
    pytest.param(dict(attn_type_list=(0, 0, 1)), "attn_type_list", id="attn-list-too-short"),
    pytest.param(dict(attn_type_list=(0, 0, 0, 1, 0)), "attn_type_list", id="attn-list-too-long"),
    pytest.param(dict(num_attention_heads=6, num_key_value_heads=4), "num_attention_heads",
                 id="heads-not-divisible-by-kv"),
    pytest.param(dict(rotary_dim=3), "rotary_dim", id="rotary-odd"),
    pytest.param(dict(rotary_dim=10), "rotary_dim", id="rotary-above-head-dim"),
    pytest.param(dict(rotary_dim=0), "rotary_dim", id="rotary-zero"),
    pytest.param(dict(num_experts_per_tok=5), "num_experts_per_tok", id="topk-above-experts"),
    pytest.param(dict(attn_type_list=(0, 2, 0, 1)), "attn_type_list[1]", id="attn-type-2"),
    pytest.param(dict(attn_type_list=(0, 0, "linear_attention", 1)), "attn_type_list[2]",
                 id="attn-type-string"),
    pytest.param(dict(moe_impl="gmm"), "moe_impl", id="unknown-moe-impl"),
    pytest.param(dict(dtype="float8"), "dtype", id="unknown-dtype"),
    pytest.param(dict(param_dtype="int8"), "param_dtype", id="unknown-param-dtype"),
    pytest.param(dict(hidden_size=0), "hidden_size", id="zero-hidden"),
    pytest.param(dict(tie_word_embeddings=True), "tie_word_embeddings", id="tied-embeddings"),
])
def test_contradiction_raises_naming_the_field(changes, field):
  tiny_config(BASE_TYPES)  # the base config itself is valid
  with pytest.raises(ValueError, match=re.escape(f"ModelConfig.{field}")):
    tiny_config(BASE_TYPES, **changes)


def test_from_dict_rejects_unknown_keys_by_name():
  values = tiny_config(BASE_TYPES).to_dict()
  assert ModelConfig.from_dict(values) == tiny_config(BASE_TYPES)
  with pytest.raises(ValueError, match="num_shared_experts"):
    ModelConfig.from_dict({**values, "num_shared_experts": 1})


def test_from_dict_rejects_missing_required_keys_by_name():
  values = tiny_config(BASE_TYPES).to_dict()
  del values["head_dim"]
  with pytest.raises(ValueError, match="head_dim"):
    ModelConfig.from_dict(values)


# ------------------------------------------------------------------ periodicity
@pytest.mark.parametrize("types, period, scanned", [
    pytest.param(RELEASE_ATTN_TYPES, 8, True, id="release-7+1"),
    pytest.param([0, 0, 0, 1, 0, 0, 0, 1], 4, True, id="two-groups-of-4"),
    pytest.param([1, 0, 0, 1, 0], 5, False, id="non-periodic"),
    pytest.param([0, 0, 0, 1, 0, 0, 1, 1], 8, False, id="almost-periodic"),
    pytest.param([0] * 6, 1, True, id="all-linear"),
    pytest.param([1], 1, False, id="single-layer"),
])
def test_layer_period_and_is_scanned(types, period, scanned):
  config = tiny_config(types)
  assert config.layer_period == period
  assert config.is_scanned is scanned
  # scan_layers=False always unrolls, whatever the period.
  assert config.replace(scan_layers=False).is_scanned is False


# ------------------------------------------------------------------ HF dialects
@pytest.mark.parametrize("model_type", ["minimax_m1", "minimax_text_01"])
def test_remote_config_json_maps_to_the_456b_config(model_type):
  reference = shipped("minimax_m1_456b")
  hf = {**released_remote_config_json(), "model_type": model_type}
  config = ModelConfig.from_hf_dict(hf)
  assert with_implementation_of(config, reference) == reference


def test_in_tree_config_json_maps_to_the_456b_config():
  reference = shipped("minimax_m1_456b")
  config = ModelConfig.from_hf_dict(released_in_tree_config_json())
  assert config.rotary_dim == 64  # head_dim 128 * partial_rotary_factor 0.5
  assert with_implementation_of(config, reference) == reference


def test_remote_dialect_reads_each_deepnorm_key_into_its_own_field():
  hf = released_remote_config_json()
  values = {}
  for i, kind in enumerate(("full_attention", "linear_attention", "mlp")):
    for j, ab in enumerate(("alpha", "beta")):
      values[f"layernorm_{kind}_{ab}"] = 1.5 + i + 0.25 * j
  config = ModelConfig.from_hf_dict({**hf, **values, "postnorm": False})
  for key, value in values.items():
    assert getattr(config, key) == value, key
  assert config.postnorm is False


def test_in_tree_dialect_reads_every_key():
  hf = {
      "model_type": "minimax", "vocab_size": 101, "hidden_size": 48, "intermediate_size": 40,
      "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 3,
      "head_dim": 12,
      "layer_types": ["linear_attention", "full_attention", "linear_attention"],
      "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0,
                          "partial_rotary_factor": 0.5},
      "full_attn_alpha_factor": 1.5, "full_attn_beta_factor": 1.75,
      "linear_attn_alpha_factor": 2.5, "linear_attn_beta_factor": 2.75,
      "mlp_alpha_factor": 3.5, "mlp_beta_factor": 3.75,
      "block_size": 64, "num_local_experts": 5, "num_experts_per_tok": 3,
      "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "router_aux_loss_coef": 0.02,
      "initializer_range": 0.05, "tie_word_embeddings": False,
  }
  expected = ModelConfig(
      vocab_size=101, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
      num_attention_heads=6, num_key_value_heads=3, head_dim=12, attn_type_list=(0, 1, 0),
      rotary_dim=6, rope_theta=5000.0, max_position_embeddings=2048,
      layernorm_full_attention_alpha=1.5, layernorm_full_attention_beta=1.75,
      layernorm_linear_attention_alpha=2.5, layernorm_linear_attention_beta=2.75,
      layernorm_mlp_alpha=3.5, layernorm_mlp_beta=3.75, postnorm=True, rms_norm_eps=1e-6,
      block_size=64, num_local_experts=5, num_experts_per_tok=3, router_aux_loss_coef=0.02,
      initializer_range=0.05)
  assert ModelConfig.from_hf_dict(hf) == expected


def test_in_tree_without_layer_types_alternates_starting_with_full():
  hf = released_in_tree_config_json()
  del hf["layer_types"]
  hf["num_hidden_layers"] = 5
  assert ModelConfig.from_hf_dict(hf).attn_type_list == (1, 0, 1, 0, 1)


def test_overrides_replace_fields_read_from_hf():
  config = ModelConfig.from_hf_dict(released_remote_config_json(), dtype="bfloat16",
                                    moe_impl="dense")
  assert (config.dtype, config.moe_impl) == ("bfloat16", "dense")


@pytest.mark.parametrize("dialect, changes, key", [
    pytest.param("remote", {"model_type": "mixtral"}, "model_type", id="unknown-model-type"),
    pytest.param("in_tree", {"model_type": None}, "model_type", id="no-model-type"),
    pytest.param("in_tree", {"layer_types": ["linear_attention", "sliding_attention"] * 40},
                 "layer_types[1]", id="unknown-layer-type"),
    pytest.param("remote", {"shared_intermediate_size": 1024}, "shared_intermediate_size",
                 id="shared-expert"),
    pytest.param("remote", {"router_jitter_noise": 0.01}, "router_jitter_noise",
                 id="jitter-remote"),
    pytest.param("in_tree", {"router_jitter_noise": 0.01}, "router_jitter_noise",
                 id="jitter-in-tree"),
    pytest.param("remote", {"attn_type_list": [0, 2] * 40}, "attn_type_list[1]",
                 id="attn-type-2"),
    pytest.param("remote", {"rotary_dim": 63}, "rotary_dim", id="odd-rotary"),
    pytest.param("in_tree", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
                 "rope_type", id="unsupported-rope-type"),
    pytest.param("remote", {"hidden_size": None}, "hidden_size", id="missing-hidden"),
])
def test_bad_hf_config_raises_naming_the_key(dialect, changes, key):
  hf = (released_remote_config_json() if dialect == "remote"
        else released_in_tree_config_json())
  ModelConfig.from_hf_dict(hf)  # valid before the change
  with pytest.raises(ValueError, match=re.escape(key)):
    ModelConfig.from_hf_dict({**hf, **changes})


def test_transformers_minimax_config_json_round_trips(tmp_path):
  # The tiny architecture of tests/helpers.py, with every checkpoint key that the helper
  # leaves at a default given a value of its own.
  config = hf_config(
      (LINEAR, LINEAR, FULL, LINEAR), max_position_embeddings=512,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                       "partial_rotary_factor": 0.5},
      full_attn_alpha_factor=1.25, full_attn_beta_factor=0.75, linear_attn_alpha_factor=1.5,
      linear_attn_beta_factor=0.5, mlp_alpha_factor=2.0, mlp_beta_factor=0.25,
      rms_norm_eps=1e-6, router_aux_loss_coef=0.01, initializer_range=0.1)
  path = tmp_path / "config.json"
  config.to_json_file(str(path))
  expected = ModelConfig(
      vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, attn_type_list=(0, 0, 1, 0),
      rotary_dim=4, rope_theta=10000.0, max_position_embeddings=512,
      layernorm_full_attention_alpha=1.25, layernorm_full_attention_beta=0.75,
      layernorm_linear_attention_alpha=1.5, layernorm_linear_attention_beta=0.5,
      layernorm_mlp_alpha=2.0, layernorm_mlp_beta=0.25, postnorm=True, rms_norm_eps=1e-6,
      block_size=8, num_local_experts=4, num_experts_per_tok=2, router_aux_loss_coef=0.01,
      initializer_range=0.1)
  assert ModelConfig.from_hf_json(path) == expected
  # save_pretrained writes the same file (plus generation_config.json).
  config.save_pretrained(str(tmp_path / "saved"))
  assert ModelConfig.from_hf_json(tmp_path / "saved" / "config.json") == expected


def test_transformers_default_layer_types_match_ours():
  transformers = require("transformers")
  hf_defaults = transformers.MiniMaxConfig(num_hidden_layers=5)
  ours = ModelConfig.from_hf_dict({**released_in_tree_config_json(), "num_hidden_layers": 5,
                                   "layer_types": None})
  assert ours.attn_type_list == tuple(int(t == "full_attention") for t in hf_defaults.layer_types)


def test_model_config_is_frozen():
  with pytest.raises(dataclasses.FrozenInstanceError):
    tiny_config(BASE_TYPES).hidden_size = 64
