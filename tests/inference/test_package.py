"""m1jax.inference's names: every submodule is reachable as itself, never hidden by an
exported function of the same name (as `generate` once hid the module generate.py)."""
import importlib
import pkgutil
import types

import m1jax
from m1jax import inference


def test_no_exported_name_hides_a_submodule():
  names = {m.name for m in pkgutil.iter_modules(inference.__path__)}
  assert {"cache", "forward", "generation", "sampling", "segmented_prefill"} <= names
  for name in names:
    module = importlib.import_module(f"m1jax.inference.{name}")
    assert getattr(inference, name) is module, name
    assert name not in inference.__all__, name
  # The statement form resolves through the package attribute, which an export could hide.
  import m1jax.inference.generation as generation
  assert isinstance(generation, types.ModuleType)


def test_functions_are_exported_from_their_modules():
  from m1jax.inference import generation, segmented_prefill
  assert m1jax.generate is inference.generate is generation.generate
  assert inference.prefill is segmented_prefill.prefill
  assert inference.left_pad is segmented_prefill.left_pad
