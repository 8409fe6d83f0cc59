"""Orbax checkpoints: train state, data iterator state and config in one atomic step dir.

Orbax writes each step into a temporary directory and renames it when complete, so a kill -9
at any moment leaves the previous steps intact and the partial one is ignored (and cleaned)
on the next start. Saves are asynchronous; `wait` blocks until they are on disk.
"""
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

# Sections whose change makes a checkpoint unusable (param shapes, token ids).
_COMPATIBILITY_KEYS = ("model", "data.tokenizer")
# Storage chunks of at most this many bytes, and scanned [L/p, ...] leaves (params and their
# Adam moments) cut along the layer axis first, so one layer's slice can be read alone (the
# streaming HF export, m1jax/hf/trainer_source.py) without decoding its whole stack.
_CHUNK_BYTES = 64 << 20


def _lookup(tree: dict, dotted: str):
  for key in dotted.split("."):
    tree = tree.get(key, {}) if isinstance(tree, dict) else {}
  return tree


def _differences(saved, current, prefix=""):
  """Dotted keys whose values differ between two nested dicts (lists compared as lists)."""
  if isinstance(saved, dict) and isinstance(current, dict):
    out = []
    for key in sorted(set(saved) | set(current)):
      out += _differences(saved.get(key, "<missing>"), current.get(key, "<missing>"),
                          f"{prefix}{key}.")
    return out
  norm = lambda x: list(x) if isinstance(x, tuple) else x  # JSON turns tuples into lists
  return [] if norm(saved) == norm(current) else [(prefix[:-1], saved, current)]


class Checkpointer:
  """Keeps the newest `keep` checkpoints under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, config: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state, save_args=_save_args(state)),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)), force=True)

  def check_compatible(self, step: int, config: dict) -> None:
    """Raises ValueError naming every differing key if the checkpoint's config cannot be
    restored into `config`."""
    saved = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config
    diffs = []
    for key in _COMPATIBILITY_KEYS:
      diffs += [(f"{key}.{k}".rstrip("."), a, b)
                for k, a, b in _differences(_lookup(saved, key), _lookup(config, key))]
    if diffs:
      lines = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diffs[:8])
      raise ValueError(f"workdir checkpoint {self.directory}/{step} was written with an "
                       f"incompatible config ({lines}). Use a fresh --workdir, or the "
                       "checkpoint's config.")

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """(state, data iterator state) of `step`; arrays take abstract_state's shapes/dtypes."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _save_args(state: Any) -> Any:
  def args(path, leaf):
    scanned = any(getattr(k, "key", None) == "groups" for k in path) and jax.numpy.ndim(leaf)
    return ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES, shard_axes=(0,) if scanned else ())
  return jax.tree_util.tree_map_with_path(args, state)


def restore_trained_params(workdir: str, step: Optional[int] = None):
  """(config ConfigDict, model, params) from a trainer workdir's checkpoint (latest by
  default), for sampling or export. The optimizer state is restored too (Orbax restores the
  saved tree whole) and dropped."""
  # Imported here: the training loop imports this module.
  import ml_collections
  from m1jax.config import ModelConfig
  from m1jax.model import MiniMaxM1ForCausalLM
  from m1jax.train.loop import _init_state
  from m1jax.train.optimizer import make_optimizer
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no trainer checkpoints under {workdir!r} (expected "
                            f"{directory}/<step>)")
  ckpt = Checkpointer(workdir, keep=1_000_000, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None or step not in ckpt.manager.all_steps():
      raise FileNotFoundError(f"{directory}: no checkpoint for step {step!r}; have "
                              f"{sorted(ckpt.manager.all_steps())}")
    saved = ckpt.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config
    config = ml_collections.ConfigDict(saved)
    model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
    tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
    state, _ = ckpt.restore(step, jax.eval_shape(lambda: _init_state(model, tx, 0)))
  finally:
    ckpt.close()
  return config, model, state.params
