"""`train.init_from`: the params a fresh run starts from (the optimizer starts fresh).

Accepts a converted checkpoint (`python -m experiments.convert_hf` output), another trainer
workdir (its latest step), or an HF checkpoint directory (read whole, with from_pretrained).
The run's own model config decides the layout and the dtypes; its architecture must match
the checkpoint's (m1jax.hf.converted.check_compatible names any difference).
"""
import os
from typing import Any

from m1jax.config import ModelConfig


def load_init_params(path: str, config: ModelConfig) -> Any:
  """Params for `config` from `path`, as jax arrays in config.param_dtype (routers fp32)."""
  from m1jax.hf.converted import FREE_FIELDS, check_compatible, is_converted_checkpoint
  if is_converted_checkpoint(path):
    from m1jax.hf.converted import load_converted
    return load_converted(path, config)[1]
  if os.path.isdir(os.path.join(path, "checkpoints")):
    import jax
    import jax.numpy as jnp
    from m1jax.train.checkpointing import restore_trained_params
    _, model, params = restore_trained_params(path)
    check_compatible(model.config, config, f"trainer workdir {path!r}")
    if model.config.is_scanned != config.is_scanned:
      raise ValueError(f"init_from={path!r}: its stack is "
                       f"{'scanned' if model.config.is_scanned else 'unrolled'}, this run's "
                       "is not; set model.scan_layers as that run did")
    # The router stays float32 (m1jax/layers/moe.py); the rest takes this run's param_dtype.
    return jax.tree_util.tree_map_with_path(
        lambda kp, x: x.astype(jnp.float32 if kp[-1].key == "router" else config.param_dtype),
        params)
  if os.path.isfile(os.path.join(path, "config.json")):
    from m1jax.hf.importing import from_pretrained
    free = {f: getattr(config, f) for f in FREE_FIELDS}
    model, params = from_pretrained(path, **free)
    check_compatible(model.config, config, f"HF checkpoint {path!r}")
    return params
  raise FileNotFoundError(f"train.init_from={path!r} is neither a converted checkpoint "
                          "(m1jax_converted.json), a trainer workdir (checkpoints/) nor an HF "
                          "checkpoint (config.json)")

