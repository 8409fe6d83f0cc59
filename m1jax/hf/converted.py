"""The converted checkpoint: HF weights as Orbax, one Orbax item per param group.

  <dir>/m1jax_converted.json   manifest (format, ModelConfig, source, every item's leaves);
                               present only in a complete conversion
  <dir>/config.json            the source's HF config.json, kept for export
  <dir>/tokenizer.json ...     the source's tokenizer files, if it had any
  <dir>/items/<name>/          an Orbax PyTree checkpoint (zarr3 arrays, no OCDBT)
  <dir>/items/<name>.done.json written after that item's Orbax commit

Items are layer-granular and layout-free: `layer_007` holds layer 7's norms, attention and
router; `layer_007.w1` / `.w3` / `.w2` its stacked [E, ...] experts (the largest unit, so the
working set of a conversion is one of those); `embed_tokens`, `norm`, `lm_head` the rest.
Orbax 0.12.8 cannot write a slice of an array, nor add a leaf to a committed checkpoint
outside its experimental partial-save API, so the scanned [L/p, ...] stacks the model uses
are built at load time (`load_converted`), where a later mesh can pass its shardings.

Arrays are written with 64 MB chunks and without OCDBT: measured on a 1 GB array, Orbax's
default (OCDBT, one chunk, a defensive copy of numpy inputs) peaked at 1.8 GB above the
array, this at 0.2 GB.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from typing import Any, Callable, Iterable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import type_handlers

from m1jax.config import ModelConfig
from m1jax.hf import keys
from m1jax.hf.outputs import read_json, write_json

MANIFEST = "m1jax_converted.json"
FORMAT = "m1jax-converted-hf"
VERSION = 1
ITEMS = "items"
CHUNK_BYTES = 64 << 20
# ModelConfig fields a loader may choose freely: precision, implementation, training knobs.
# Every other field changes the function the weights compute, so it must match.
FREE_FIELDS = ("dtype", "param_dtype", "lm_head_fp32", "moe_impl", "moe_all_to_all",
               "moe_capacity_factor", "lightning_impl",
               "attention_impl", "scan_layers", "remat", "remat_policy", "block_size", "router_aux_loss_coef",
               "initializer_range", "max_position_embeddings")


@dataclasses.dataclass(frozen=True)
class Item:
  name: str
  params: tuple[keys.Param, ...]

  def leaves(self, cfg: ModelConfig, dtype_of: Callable) -> dict[str, list]:
    """{"a/b": [shape, dtype name]} of the item, as the manifest records it."""
    return {"/".join(p.path): [list(p.shape(cfg)), np.dtype(dtype_of(p)).name]
            for p in self.params}


def item_name(param: keys.Param) -> str:
  if param.layer is None:
    return param.path[0]
  base = f"layer_{param.layer:03d}"
  return f"{base}.{param.path[-1]}" if param.rule.per_expert else base


def items(cfg: ModelConfig, params: Iterable[keys.Param]) -> list[Item]:
  """`params` grouped into items, in first-appearance order."""
  groups: dict[str, list[keys.Param]] = {}
  for param in params:
    groups.setdefault(item_name(param), []).append(param)
  return [Item(name, tuple(ps)) for name, ps in groups.items()]


def nest(flat: dict[tuple[str, ...], Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _leaf(tree: dict, path: tuple[str, ...]):
  for name in path:
    tree = tree[name]
  return tree


# -------------------------------------------------------------------- Orbax items
class _DropOcdbtMergeNotice(logging.Filter):
  """Orbax warns on every non-OCDBT save that it found no OCDBT files to merge."""

  def filter(self, record):
    return "Skipping merge of OCDBT checkpoints" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropOcdbtMergeNotice())


def _checkpointer() -> ocp.Checkpointer:
  # No defensive copy of numpy inputs: the caller does not touch them during the save.
  registry = type_handlers.create_type_handler_registry(
      (np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, type_handlers.get_type_handler(jax.Array)))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
      type_handler_registry=registry, use_ocdbt=False, use_zarr3=True))


def save_item(directory: str, name: str, tree: dict, record: dict,
              split_first_axis: bool = False) -> None:
  """Writes one item (Orbax commits it atomically), then its done-record.

  split_first_axis: chunk along axis 0 first (stacked experts: one expert's slice can then
  be read without decoding the others')."""
  path = os.path.join(directory, ITEMS, name)
  axes = (0,) if split_first_axis else ()
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES,
                                                  shard_axes=axes), tree)
  checkpointer = _checkpointer()
  try:
    checkpointer.save(path, args=ocp.args.PyTreeSave(tree, save_args=save_args))
  finally:
    checkpointer.close()
  write_json(path + ".done.json", record)


def item_is_complete(directory: str, name: str, record: dict) -> bool:
  """True if the item was committed with exactly `record` (its leaves' shapes and dtypes,
  its source) and Orbax's own metadata agrees."""
  path = os.path.join(directory, ITEMS, name)
  done = path + ".done.json"
  if not (os.path.isdir(path) and os.path.isfile(done)):
    return False
  checkpointer = _checkpointer()
  try:
    if read_json(done) != record:
      return False
    metadata = checkpointer.metadata(path).item_metadata.tree
  except Exception:  # noqa: BLE001  (unreadable in any way: not complete, redo it)
    return False
  finally:
    checkpointer.close()
  for leaf, (shape, dtype) in record["leaves"].items():
    try:
      meta = _leaf(metadata, tuple(leaf.split("/")))
    except (KeyError, TypeError):
      return False
    if list(meta.shape) != shape or np.dtype(meta.dtype).name != dtype:
      return False
  return True


def restore_item(directory: str, name: str, shardings: Optional[dict] = None) -> dict:
  """The item's tree: numpy leaves, or jax.Arrays placed by `shardings` ({"a/b": Sharding})."""
  path = os.path.join(directory, ITEMS, name)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"converted checkpoint {directory}: item {name!r} is missing "
                            f"({path})")
  checkpointer = _checkpointer()
  try:
    metadata = checkpointer.metadata(path).item_metadata.tree

    def args(kp, meta):
      where = "/".join(k.key for k in kp)
      if shardings and shardings.get(where) is not None:
        return ocp.ArrayRestoreArgs(sharding=shardings[where], global_shape=meta.shape)
      return ocp.RestoreArgs(restore_type=np.ndarray)

    restore_args = jax.tree_util.tree_map_with_path(args, metadata)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=metadata, restore_args=restore_args))
  finally:
    checkpointer.close()


# -------------------------------------------------------------------- whole checkpoints
def is_converted_checkpoint(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str) -> dict:
  manifest_path = os.path.join(path, MANIFEST)
  if not os.path.isfile(manifest_path):
    partial = os.path.isdir(os.path.abspath(path) + ".partial")
    hint = (f"; {path}.partial holds an unfinished conversion: rerun convert_hf to finish it"
            if partial else "")
    raise FileNotFoundError(f"{path!r} is not a converted checkpoint (no {MANIFEST}){hint}")
  manifest = read_json(manifest_path)
  if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
    raise ValueError(f"{manifest_path}: format {manifest.get('format')!r} version "
                     f"{manifest.get('version')!r}; this m1jax reads {FORMAT!r} {VERSION}")
  return manifest


def check_compatible(saved: ModelConfig, config: ModelConfig, where: str) -> None:
  """Raises ValueError naming every architecture field in which `config` differs."""
  diffs = [(f.name, getattr(saved, f.name), getattr(config, f.name))
           for f in dataclasses.fields(ModelConfig)
           if f.name not in FREE_FIELDS and getattr(saved, f.name) != getattr(config, f.name)]
  if diffs:
    lines = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, a, b in diffs[:8])
    raise ValueError(f"{where} holds a different architecture ({lines})")


def load_converted(path: str, config: Optional[ModelConfig] = None, *,
                   shardings: Any = None) -> tuple[ModelConfig, Any]:
  """(ModelConfig, params) of a converted checkpoint, in `config`'s layout and dtypes.

  config: the model to load into (default: the checkpoint's own ModelConfig). Fields in
    FREE_FIELDS may differ (param_dtype casts, scan_layers picks the layout); any other
    difference is a ValueError.
  shardings: None (host arrays, then jax arrays on the default device), or a pytree of
    jax.sharding.Sharding in the model's param layout (e.g. NamedShardings from the logical
    axes): each layer is then restored straight into its slice's sharding and the scanned
    stacks are assembled on the devices.
  """
  manifest = read_manifest(path)
  saved = ModelConfig.from_dict(manifest["model"])
  config = saved if config is None else config
  check_compatible(saved, config, f"converted checkpoint {path!r}")
  plan = items(config, keys.params(config))
  missing = sorted(set(i.name for i in plan) - set(manifest["items"]))
  if missing:
    raise ValueError(f"{path}: manifest lacks items {missing[:5]}")
  from m1jax.hf.importing import param_dtype
  if shardings is not None:
    return config, _load_sharded(path, config, plan, shardings)
  tree: dict = {}
  for item in plan:
    restored = restore_item(path, item.name)
    for param in item.params:
      value = _leaf(restored, param.path)
      keys.put_param(tree, config, param, value.astype(param_dtype(config, param.rule),
                                                       copy=False))
  return config, jax.tree.map(jax.numpy.asarray, tree)


def _load_sharded(path: str, config: ModelConfig, plan: list[Item], shardings: Any) -> dict:
  from m1jax.hf.importing import param_dtype
  pieces: dict[tuple, list] = {}
  targets: dict[tuple, Any] = {}
  for item in plan:
    per_leaf = {}
    for param in item.params:
      where, index = keys.param_location(config, param)
      target = _leaf(shardings, where)
      targets[where] = target
      per_leaf["/".join(param.path)] = (target if index is None else
                                        _drop_leading_axis(target))
    restored = restore_item(path, item.name, per_leaf)
    for param in item.params:
      where, _ = keys.param_location(config, param)
      value = _leaf(restored, param.path).astype(param_dtype(config, param.rule))
      pieces.setdefault(where, []).append(value)
  flat = {}
  for where, values in pieces.items():
    if where[:2] != ("model", "groups"):
      flat[where] = values[0]
    else:  # a scanned stack, [L/p, ...], assembled on the devices
      flat[where] = jax.jit(lambda *xs: jax.numpy.stack(xs), out_shardings=targets[where])(
          *values)
  return nest(flat)


def _drop_leading_axis(sharding):
  """The sharding of one [L/p] slice of a scanned leaf."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = tuple(sharding.spec)
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))
  return sharding


class ConvertedSource:
  """Export source (m1jax.hf.exporting.ParamSource) over a converted checkpoint: whole small
  params through Orbax (one item kept at a time), slices (one expert, a block of the head's
  rows) through TensorStore, so a layer's stacked experts are never read whole."""

  def __init__(self, path: str):
    self.path = path
    self.manifest = read_manifest(path)
    self.config = ModelConfig.from_dict(self.manifest["model"])
    self._name, self._tree = None, None
    self._context = type_handlers.get_ts_context(use_ocdbt=False)
    self._open = {}

  def get(self, param: keys.Param) -> np.ndarray:
    name = item_name(param)
    if name != self._name:
      self._tree = None  # drop the previous item before reading the next
      self._tree, self._name = restore_item(self.path, name), name
    return _leaf(self._tree, param.path)

  def get_slice(self, param: keys.Param, index: tuple) -> np.ndarray:
    import tensorstore as ts
    from etils import epath
    where = (item_name(param), ".".join(param.path))
    if where not in self._open:
      self._open.clear()  # one array open at a time
      info = type_handlers.ParamInfo(
          name=where[1], parent_dir=epath.Path(self.path) / ITEMS / where[0], use_zarr3=True,
          ts_context=self._context)
      spec = type_handlers.get_json_tspec_read(info, use_ocdbt=False)
      self._open[where] = ts.open(spec, open=True, context=self._context).result()
    return np.asarray(self._open[where][index].read().result())


def copy_sidecar_files(src: str, dst: str) -> None:
  """config.json and tokenizer files of `src` (an HF directory) into `dst`."""
  from m1jax.hf.outputs import TOKENIZER_FILES
  for name in ("config.json",) + TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
