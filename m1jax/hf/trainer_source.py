"""Export source over an experiments.train workdir: the params of one step, read one layer
slice at a time, never the optimizer state.

Orbax restores whole leaves, and a scanned leaf holds every group ([L/p, E, M, F] for the
experts), so this opens each param leaf of the step's `state` item with TensorStore (through
Orbax's own read spec) and reads only `[g]`, or `[g, e]` for one expert. The trainer writes
its scanned leaves chunked along those axes (m1jax/train/checkpointing.py), so a slice read
touches only its own chunks.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from orbax.checkpoint import type_handlers

from m1jax.config import ModelConfig
from m1jax.hf import keys


def latest_step(directory: str) -> Optional[int]:
  manager = ocp.CheckpointManager(directory)
  try:
    return manager.latest_step()
  finally:
    manager.close()


class TrainerCheckpointSource:
  """ParamSource (m1jax.hf.exporting) over `<workdir>/checkpoints/<step>`."""

  def __init__(self, workdir: str, step: Optional[int] = None):
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
      raise FileNotFoundError(f"no trainer checkpoints under {workdir!r} (expected "
                              f"{directory}/<step>)")
    manager = ocp.CheckpointManager(directory)
    try:
      steps = sorted(manager.all_steps())
      step = manager.latest_step() if step is None else step
      if step is None or step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint for step {step!r}; have {steps}")
      saved = manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore())).config
    finally:
      manager.close()
    self.step, self.train_config = step, saved
    self.config = ModelConfig.from_dict(saved["model"])
    self._state = epath.Path(directory) / str(step) / "state"
    with open(self._state / "_METADATA") as f:
      self._use_zarr3 = bool(json.load(f).get("use_zarr3", False))
    self._use_ocdbt = type_handlers.is_ocdbt_checkpoint(self._state)
    self._context = type_handlers.get_ts_context(use_ocdbt=self._use_ocdbt)

  def _open(self, path: tuple[str, ...]):
    name = ".".join(("params",) + path)
    info = type_handlers.ParamInfo(name=name, parent_dir=self._state,
                                   use_zarr3=self._use_zarr3, ts_context=self._context)
    spec = type_handlers.get_json_tspec_read(info, use_ocdbt=self._use_ocdbt)
    try:
      return ts.open(spec, open=True, context=self._context).result()
    except ValueError as e:
      raise FileNotFoundError(f"{self._state}: no param leaf {name!r} ({e})") from e

  def get(self, param: keys.Param) -> np.ndarray:
    return self.get_slice(param, ())

  def get_slice(self, param: keys.Param, index: tuple) -> np.ndarray:
    """param[index] (param: this layer's, unstacked), reading only the chunks it covers."""
    path, group = keys.param_location(self.config, param)
    array = self._open(path)
    where = index if group is None else (group,) + tuple(index)
    return np.asarray(array[where].read().result() if where else array.read().result())
