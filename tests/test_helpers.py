"""The shared test helpers themselves: optional imports under CI, and the tiny config."""
import pytest

from tests.helpers import TINY_ATTN_TYPES, require, tiny_config

MISSING = "m1jax_test_no_such_module"


def _outcome(module_name: str):
  """(exception type, message) of require(module_name). Caught here, because a skip that
  escaped would turn this very test into a skip, not a failure."""
  try:
    require(module_name)
  except (pytest.skip.Exception, pytest.fail.Exception) as e:
    return type(e), str(e)
  return None, ""


def test_require_skips_a_missing_module_outside_ci(monkeypatch):
  monkeypatch.delenv("CI", raising=False)
  kind, message = _outcome(MISSING)
  assert kind is pytest.skip.Exception and MISSING in message


@pytest.mark.parametrize("value", ["true", "1"])
def test_require_fails_instead_of_skipping_under_ci(monkeypatch, value):
  monkeypatch.setenv("CI", value)
  kind, message = _outcome(MISSING)
  assert kind is pytest.fail.Exception, f"under CI={value!r} require gave {kind}, not a failure"
  assert f"CI is set but '{MISSING}'" in message


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_ci_turned_off_explicitly_still_skips(monkeypatch, value):
  monkeypatch.setenv("CI", value)
  kind, _ = _outcome(MISSING)
  assert kind is pytest.skip.Exception


def test_require_returns_a_present_module(monkeypatch):
  monkeypatch.setenv("CI", "true")
  assert require("json").dumps([1]) == "[1]"


def test_tiny_config_applies_layer_types_and_overrides():
  default = tiny_config()
  assert default.attn_type_list == TINY_ATTN_TYPES
  assert default.num_hidden_layers == len(TINY_ATTN_TYPES)
  config = tiny_config((0, 0, 0, 1) * 2, head_dim=16, rotary_dim=8)
  assert config.num_hidden_layers == 8 and config.is_scanned
  assert (config.head_dim, config.rotary_dim) == (16, 8)
  with pytest.raises(ValueError, match="attn_type_list"):
    tiny_config((0, 1), attn_type_list=(0, 1, 0))  # overrides win, validation still runs
