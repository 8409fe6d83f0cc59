"""Hugging Face <-> m1jax (docs/MODEL.md §8): config dialects, the key table, import, export,
and streaming conversion to and from Orbax.

  model, params = m1jax.from_pretrained(hf_dir)                 # HF -> in-memory params
  m1jax.save_pretrained(model.config, params, out_dir, dialect="minimax")   # and back
  convert_hf_to_orbax(hf_dir, out_dir)      # streaming, bounded memory (experiments.convert_hf)
  export_to_hf(checkpoint_dir, out_dir)     # streaming, params only (experiments.export_hf)

The Orbax side (m1jax.hf.converted, .convert, .trainer_source) is imported on first use:
importing m1jax should not import Orbax.
"""
import importlib

from m1jax.hf.dialects import (DIALECTS, hf_config_from_model_config, hf_config_to_fields,
                               model_config_from_hf)
from m1jax.hf.exporting import save_pretrained, write_hf_checkpoint
from m1jax.hf.importing import from_pretrained, plan_import, read_hf_config
from m1jax.hf.keys import RULES
from m1jax.hf.safetensors_io import CheckpointError, inventory

_LAZY = {
    "convert_hf_to_orbax": "m1jax.hf.convert",
    "load_converted": "m1jax.hf.converted",
    "is_converted_checkpoint": "m1jax.hf.converted",
    "export_to_hf": "m1jax.hf.export",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'm1jax.hf' has no attribute {name!r}")


__all__ = ["CheckpointError", "DIALECTS", "RULES", "from_pretrained", "hf_config_from_model_config",
           "hf_config_to_fields", "inventory", "model_config_from_hf", "plan_import",
           "read_hf_config", "save_pretrained", "write_hf_checkpoint", *_LAZY]
