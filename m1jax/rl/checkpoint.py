"""Orbax checkpoints of an RL run: train state (params, AdamW state, update count), the
rollout position (JSON: step, seed, next prompt index) and the config, in one atomic step
directory (Orbax writes a temporary directory and renames it when complete).

The rollout stream is a pure function of (rl.seed, step), so this JSON is the whole data
state: no iterator is saved.
"""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class RLCheckpointer:
  """Keeps the newest `keep` checkpoints under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, position: dict, config: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position),
        config=ocp.args.JsonSave(config)), force=True)

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict, dict]:
    """(state, position, config) of `step`; arrays take like_state's shapes and dtypes."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), position=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore()))
    return out.state, out.position, out.config

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
