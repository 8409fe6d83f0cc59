"""Orbax checkpoints: train state, data iterator state and config in one atomic step dir.

Orbax writes each step into a temporary directory and renames it when complete, so a kill -9
at any moment leaves the previous steps intact and the partial one is ignored (and cleaned)
on the next start. Saves are asynchronous; `wait` blocks until they are on disk.

On a mesh every process writes the shards it owns, and a restore reads each array straight
into the shardings of the target it is given: another mesh, or one device. The data
iterator state is per process (grain's handler: one file per process).
"""
import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp

from m1jax import sharding

# Sections whose change makes a checkpoint unusable (param shapes, token ids).
_COMPATIBILITY_KEYS = ("model", "data.tokenizer")
# Model fields that choose how the same state is computed, not what it holds: a run may
# resume with others (on a new mesh, e.g. a larger MoE capacity or another kernel).
_EXECUTION_FIELDS = ("moe_impl", "moe_all_to_all", "moe_capacity_factor", "lightning_impl",
                     "attention_impl", "remat", "remat_policy")
# Storage chunks of at most this many bytes, and scanned [L/p, ...] leaves (params and their
# Adam moments) cut along the layer axis first (and stacked experts along the expert axis),
# so one layer's (one expert's) slice can be read alone (the streaming HF export,
# m1jax/hf/trainer_source.py) without decoding its whole stack.
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

  def save(self, step: int, state: Any, data_iter: Any, config: dict) -> None:
    """Saves `state` (each process its shards), this process's position of `data_iter` (a
    grain DatasetIterator) and the config."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state, save_args=_save_args(state)),
        data=grain.checkpoint.CheckpointSave(data_iter),
        config=ocp.args.JsonSave(config)), force=True)

  def check_compatible(self, step: int, config: dict) -> None:
    """Raises ValueError naming every differing key if the checkpoint's config cannot be
    restored into `config`."""
    saved = self.manager.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore())).config
    diffs = []
    for key in _COMPATIBILITY_KEYS:
      diffs += [(f"{key}.{k}".rstrip("."), a, b)
                for k, a, b in _differences(_lookup(saved, key), _lookup(config, key))
                if not (key == "model" and k in _EXECUTION_FIELDS)]
    if diffs:
      lines = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diffs[:8])
      raise ValueError(f"workdir checkpoint {self.directory}/{step} was written with an "
                       f"incompatible config ({lines}). Use a fresh --workdir, or the "
                       "checkpoint's config.")

  def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> Any:
    """The state of `step`, each array in abstract_state's shape, dtype and sharding (the
    saved mesh does not matter); `data_iter`, if given, is moved to this process's saved
    position.

    Raises ValueError naming the leaf, the shapes and the target mesh when the checkpoint
    does not fit the target.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    self._check_shapes(step, abstract)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items)).state

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the params subtree of `step` (Adam moments are never read), in
    abstract_params' shapes, dtypes and shardings."""
    abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_params)}
    self._check_shapes(step, abstract)
    # PyTreeRestore (partial restores) takes the target shardings from restore_args only.
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
            partial_restore=True)))
    return restored.state["params"]

  def _check_shapes(self, step: int, abstract: Any) -> None:
    # Read directly: a fresh manager knows no handler for the item yet, so its
    # item_metadata is None until something was restored.
    metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(self.directory, str(step),
                                                              "state"))
    saved = getattr(metadata, "item_metadata", metadata)
    saved = getattr(saved, "tree", saved)
    flat_saved = {_path_key(p): m for p, m in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for path, want in jax.tree_util.tree_flatten_with_path(abstract)[0]:
      key = _path_key(path)
      have = flat_saved.get(key)
      shape = getattr(have, "shape", None)
      if shape is not None and tuple(shape) != tuple(want.shape):
        mesh = getattr(getattr(want, "sharding", None), "mesh", None)
        where = f"mesh {sharding.describe(mesh)}" if mesh is not None else "the target"
        raise ValueError(f"{self.directory}/{step}: {key} was saved with shape "
                         f"{tuple(shape)}, but {where} expects {tuple(want.shape)}; restore "
                         "with the checkpoint's model config")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _path_key(path) -> str:
  """"params/embed_tokens" whether the tree is the TrainState dataclass (attribute keys) or
  the dict Orbax's metadata holds (dict keys)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def _save_args(state: Any) -> Any:
  def args(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    scanned = "groups" in names and jax.numpy.ndim(leaf) > 0
    # Stacked experts [L/p, E, ...]: one expert of one layer per chunk (or less).
    experts = scanned and names[-1] in ("w1", "w2", "w3") and jax.numpy.ndim(leaf) > 1
    axes = (0, 1) if experts else (0,) if scanned else ()
    return ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES, shard_axes=axes)
  return jax.tree_util.tree_map_with_path(args, state)


def restore_trained_params(workdir: str, step: Optional[int] = None, mesh=None):
  """(config ConfigDict, model, params) from a trainer workdir's checkpoint (latest by
  default), for sampling or export. Reads the params only, never the optimizer state; onto
  `mesh` (sharded by the logical-axis rules) or, by default, onto the first device."""
  import flax.linen as nn
  import jax.numpy as jnp
  import ml_collections
  from m1jax.config import ModelConfig
  from m1jax.model import MiniMaxM1ForCausalLM
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
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                              jnp.zeros((1, 8), jnp.int32))["params"])
    abstract = nn.meta.unbox(boxed)
    if mesh is None:
      one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      targets = jax.tree.map(lambda _: one, abstract)
    else:
      targets = sharding.logical_shardings(abstract, nn.get_partition_spec(boxed), mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, targets)
    params = ckpt.restore_params(step, abstract)
  finally:
    ckpt.close()
  return config, model, params
