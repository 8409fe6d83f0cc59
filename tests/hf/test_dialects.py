"""config.json in both HF dialects, both directions (m1jax/hf/dialects.py)."""
import dataclasses

import pytest

from configs import minimax_m1_456b
from m1jax.config import ModelConfig
from m1jax.hf import dialects
from m1jax.hf.converted import FREE_FIELDS
from tests.helpers import require, tiny_config

# ModelConfig fields no dialect stores: the implementation choices (the fields a loader may
# pick freely) and the lightning norm eps.
_NOT_IN_HF = tuple(f for f in FREE_FIELDS if f not in (
    "block_size", "router_aux_loss_coef", "initializer_range", "max_position_embeddings")) + (
        "lightning_norm_eps",)


def _round_trip(cfg, dialect):
  """(ModelConfig from the written config.json, with cfg's values for fields it lacks; the
  config.json dict)."""
  hf = dialects.hf_config_from_model_config(cfg, dialect, "float32")
  fields = dialects.hf_config_to_fields(hf)
  assert set(fields) | {"block_size"} | set(_NOT_IN_HF) == {
      f.name for f in dataclasses.fields(ModelConfig)}
  return cfg.replace(**fields), hf


def _distinct(cfg):
  """Every alpha/beta different, partial rotary, non-default scalars: nothing can swap."""
  return cfg.replace(layernorm_full_attention_alpha=1.5, layernorm_full_attention_beta=0.75,
                     layernorm_linear_attention_alpha=1.25,
                     layernorm_linear_attention_beta=0.5, layernorm_mlp_alpha=1.75,
                     layernorm_mlp_beta=0.25, rotary_dim=6, rope_theta=1234.0,
                     rms_norm_eps=3e-6, router_aux_loss_coef=0.02,
                     max_position_embeddings=777, initializer_range=0.05, block_size=16)


@pytest.mark.parametrize("dialect", dialects.DIALECTS)
def test_fields_survive_both_directions(dialect):
  cfg = _distinct(tiny_config((1, 0, 0, 1)))
  back, hf = _round_trip(cfg, dialect)
  assert hf["model_type"] == dialect
  assert back == cfg
  if dialect == "minimax":
    assert hf["rope_parameters"]["partial_rotary_factor"] == 6 / 8
    assert hf["layer_types"] == ["full_attention", "linear_attention", "linear_attention",
                                 "full_attention"]
  else:
    # The remote code has no block_size key (a module constant there; any value computes
    # the same function).
    assert "block_size" not in hf
    assert hf["attn_type_list"] == [1, 0, 0, 1] and hf["rotary_dim"] == 6


def test_remote_postnorm_false_round_trips_and_in_tree_refuses_it():
  cfg = tiny_config().replace(postnorm=False)
  assert _round_trip(cfg, "minimax_m1")[0].postnorm is False
  with pytest.raises(ValueError, match="post-norm"):
    dialects.hf_config_from_model_config(cfg, "minimax", "float32")


def test_released_config_in_the_remote_dialect():
  cfg = ModelConfig.from_dict(minimax_m1_456b.get_config().model.to_dict())
  hf = dialects.hf_config_from_model_config(cfg, "minimax_m1", "bfloat16")
  assert hf["architectures"] == ["MiniMaxM1ForCausalLM"]
  assert hf["attn_type_list"] == ([0] * 7 + [1]) * 10
  assert (hf["rotary_dim"], hf["rope_theta"], hf["postnorm"]) == (64, 1e7, True)
  assert hf["layernorm_mlp_alpha"] == pytest.approx(160 ** 0.25)
  assert hf["torch_dtype"] == "bfloat16" and hf["shared_intermediate_size"] == 0
  fields = dialects.hf_config_to_fields(hf)
  assert cfg.replace(**fields) == cfg


@pytest.mark.parametrize("dialect", ["minimax_m2", "mixtral", ""])
def test_unknown_dialect_is_refused(dialect):
  with pytest.raises(ValueError, match=r"unknown HF dialect"):
    dialects.hf_config_from_model_config(tiny_config(), dialect, "float32")
  with pytest.raises(ValueError, match=r"unknown model_type"):
    dialects.hf_config_to_fields({"model_type": dialect})


def test_transformers_reads_the_in_tree_dialect():
  transformers = require("transformers")
  cfg = _distinct(tiny_config((1, 0, 0, 1)))
  hf = dialects.hf_config_from_model_config(cfg, "minimax", "float32")
  theirs = transformers.MiniMaxConfig(**hf)
  assert theirs.layer_types == hf["layer_types"]
  assert theirs.mlp_alpha_factor == 1.75 and theirs.block_size == 16
  assert theirs.rope_parameters["rope_theta"] == 1234.0
  # And what transformers writes back reads as the same config.
  assert cfg.replace(**dialects.hf_config_to_fields(theirs.to_dict())) == cfg

