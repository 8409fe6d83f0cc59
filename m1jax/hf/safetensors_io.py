"""Safetensors checkpoints on disk: the inventory of a directory, lazy tensor reads, and a
streaming shard writer.

Reading never unpickles: a directory with only `.bin`/`.pt` weights is refused. Every file's
header is read (and checked against the index) before any tensor, so a bad checkpoint fails
before anything is written. Tensors are read one at a time through `safe_open`, each with
its own handle: the mapped pages of a shard count towards the process's RSS while a handle is
open, so holding one open across a whole shard would add the shard's size to the peak.

Writing streams: the shard plan (names, shapes, dtypes) is known up front, so each file's
header is written first and then every tensor as it arrives; no shard is held in memory.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import struct
from typing import Any, Iterable, Optional

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, for safetensors' numpy reader)
import numpy as np
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Safetensors dtype names m1jax converts from and writes; any other (ints, bools, fp8 without
# its scales) cannot become a weight.
FLOAT_DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
                "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16)}
_NAMES = {v: k for k, v in FLOAT_DTYPES.items()}
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class CheckpointError(ValueError):
  """A checkpoint that does not match its config (missing/extra tensor, wrong shape, ...)."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One tensor of a checkpoint, from its file's header (nothing read yet)."""
  key: str
  file: str
  dtype: str                 # safetensors name, e.g. "BF16"
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * _ITEMSIZE.get(self.dtype, 1)

  def describe(self) -> str:
    return f"{self.key!r} ({self.dtype} {self.shape}, in {os.path.basename(self.file)})"


# -------------------------------------------------------------------- reading
def checkpoint_files(path: str) -> tuple[list[str], Optional[dict[str, str]]]:
  """(safetensors files, the index's weight_map or None) of a checkpoint directory."""
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.isfile(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as e:
      raise CheckpointError(f"{index_path}: not a valid index ({e})") from e
    if not isinstance(weight_map, dict):
      raise CheckpointError(f"{index_path}: no 'weight_map' object")
    files = sorted(set(weight_map.values()))
    absent = [name for name in files if not os.path.isfile(os.path.join(path, name))]
    if absent:
      keys = sorted(k for k, v in weight_map.items() if v in absent)
      raise CheckpointError(f"{index_path} lists shards that do not exist: {absent} (they "
                            f"should hold {len(keys)} tensors, e.g. {keys[0]!r})")
    return [os.path.join(path, name) for name in files], weight_map
  single = os.path.join(path, SINGLE_FILE)
  if os.path.isfile(single):
    return [single], None
  pickles = sorted(n for n in os.listdir(path) if n.endswith(PICKLE_SUFFIXES))
  if pickles:
    raise CheckpointError(
        f"{path!s} holds only pickle weights {pickles}; m1jax never unpickles files. Convert "
        "them to safetensors first (e.g. transformers' save_pretrained(..., "
        "safe_serialization=True)).")
  raise CheckpointError(f"{path!s} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def _open(file: str):
  try:
    return safe_open(file, framework="numpy")
  except (SafetensorError, OSError) as e:
    size = os.path.getsize(file) if os.path.exists(file) else None
    raise CheckpointError(f"{file}: cannot read the safetensors header ({e}); the file "
                          f"({size} bytes) is truncated or corrupt") from e


def inventory(path: str) -> dict[str, TensorInfo]:
  """Every tensor of the checkpoint directory `path`, from the file headers only."""
  files, weight_map = checkpoint_files(path)
  tensors: dict[str, TensorInfo] = {}
  for file in files:
    with _open(file) as f:
      for key in f.keys():
        if key in tensors:
          raise CheckpointError(f"tensor {key!r} appears in two shards: "
                                f"{os.path.basename(tensors[key].file)} and "
                                f"{os.path.basename(file)}")
        piece = f.get_slice(key)
        tensors[key] = TensorInfo(key, file, piece.get_dtype(), tuple(piece.get_shape()))
  if weight_map is not None:
    wrong = sorted(k for k, v in weight_map.items()
                   if k not in tensors or os.path.basename(tensors[k].file) != v)
    if wrong:
      k = wrong[0]
      found = os.path.basename(tensors[k].file) if k in tensors else "no shard"
      raise CheckpointError(f"{os.path.join(path, INDEX_FILE)} places {len(wrong)} tensors "
                            f"where they are not, e.g. {k!r} in {weight_map[k]} (found in "
                            f"{found})")
    unlisted = sorted(set(tensors) - set(weight_map))
    if unlisted:
      raise CheckpointError(f"{len(unlisted)} tensors are in shards but not in "
                            f"{INDEX_FILE}, e.g. {tensors[unlisted[0]].describe()}")
  return tensors


def read_tensor(info: TensorInfo, index: Any = None) -> np.ndarray:
  """The tensor (or `index`, a tuple of slices, of it) as numpy, read through its own
  handle."""
  try:
    with _open(info.file) as f:
      if index is None:
        return f.get_tensor(info.key)
      return f.get_slice(info.key)[index]
  except SafetensorError as e:
    raise CheckpointError(f"cannot read tensor {info.describe()}: {e}") from e


# -------------------------------------------------------------------- writing
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
  """Bytes of an int or of "5GB" / "500MB" / "2GiB" (decimal units as in transformers)."""
  if isinstance(size, int):
    value = size
  else:
    match = _SIZE.match(str(size))
    if match is None:
      raise ValueError(f"max_shard_size: cannot read {size!r}; use bytes or e.g. '5GB'")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
  if value < 1:
    raise ValueError(f"max_shard_size must be positive, got {size!r}")
  return value


def dtype_name(dtype: Any) -> str:
  name = _NAMES.get(np.dtype(dtype))
  if name is None:
    raise ValueError(f"cannot write dtype {dtype} to safetensors; expected one of "
                     f"{sorted(str(d) for d in FLOAT_DTYPES.values())}")
  return name


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize


def plan_shards(entries: Iterable[Entry], max_shard_size: int) -> list[list[Entry]]:
  """Consecutive entries packed greedily into shards of at most `max_shard_size` bytes (a
  larger tensor gets a shard of its own), in order."""
  shards: list[list[Entry]] = [[]]
  size = 0
  for entry in entries:
    if shards[-1] and size + entry.nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(entry)
    size += entry.nbytes
  return shards


def shard_names(count: int) -> list[str]:
  if count == 1:
    return [SINGLE_FILE]
  return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class ShardWriter:
  """Writes one safetensors file whose contents are declared up front: the header first,
  then each tensor, in order, as `write` receives it."""

  def __init__(self, file: str, entries: list[Entry], metadata: Optional[dict] = None):
    self.file, self.entries, self._next = file, entries, 0
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for e in entries:
      header[e.key] = {"dtype": dtype_name(e.dtype), "shape": list(e.shape),
                       "data_offsets": [offset, offset + e.nbytes]}
      offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keeps the tensor data 8-byte aligned
    self._f = open(file, "wb")
    self._f.write(struct.pack("<Q", len(blob)) + blob)

  @property
  def next_entry(self) -> Entry:
    return self.entries[self._next]

  def write(self, key: str, value: np.ndarray) -> None:
    self.write_rows(key, [value])

  def write_rows(self, key: str, blocks: Iterable[np.ndarray]) -> None:
    """Writes the next tensor from consecutive blocks of its rows (leading axis)."""
    if self._next >= len(self.entries):
      raise ValueError(f"{self.file}: unexpected extra tensor {key!r}")
    e = self.entries[self._next]
    rows = 0
    for block in blocks:
      if key != e.key or tuple(block.shape[1:]) != e.shape[1:] or block.dtype != e.dtype:
        raise ValueError(f"{self.file}: expected {e.key!r} {e.shape} {e.dtype} next, got "
                         f"{key!r} rows of {tuple(block.shape)} {block.dtype}")
      self._f.write(np.ascontiguousarray(block).reshape(-1).view(np.uint8).data)
      rows += block.shape[0] if block.ndim else 1
    if rows != (e.shape[0] if e.shape else 1):
      raise ValueError(f"{self.file}: {key!r} got {rows} rows, expected shape {e.shape}")
    self._next += 1

  def close(self) -> None:
    self._f.close()
    if self._next != len(self.entries):
      raise ValueError(f"{self.file}: {len(self.entries) - self._next} declared tensors were "
                       f"never written (next: {self.entries[self._next].key!r})")
