"""Streaming HF -> Orbax conversion with bounded memory and resume
(experiments/convert_hf.py is its command line).

Order of work:
  1. read config.json and every safetensors header; match them against the key table
     (missing / extra / wrong-shape / unconvertible tensors, truncated files, missing shards
     all fail here, before anything is written);
  2. write into `<out>.partial/`: one Orbax item per param group (m1jax/hf/converted.py),
     each read tensor by tensor (a layer's experts stacked into one [E, ...] array);
  3. write the manifest and rename `<out>.partial` to `<out>`.
An interrupted run leaves `<out>.partial`; rerunning the same command skips the items that
were committed and still verify, and redoes the rest. `<out>` itself only ever appears
complete.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any, Callable, Optional

import jax
import numpy as np

from m1jax.config import ModelConfig
from m1jax.hf import converted, keys
from m1jax.hf.importing import Source, param_dtype, plan_import, read_hf_config, read_param
from m1jax.hf.outputs import check_output_dir, publish, read_json, write_json
from m1jax.hf.progress import Progress, release_free_memory
from m1jax.hf.safetensors_io import inventory

PROGRESS_FILE = "conversion.json"


def _fingerprint(hf_dir: str, tensors: dict) -> dict:
  """What identifies the source: its config.json and every shard's name, size and mtime."""
  files = sorted({t.file for t in tensors.values()})
  with open(os.path.join(hf_dir, "config.json"), "rb") as f:
    config_hash = hashlib.sha256(f.read()).hexdigest()
  return {"config_sha256": config_hash,
          "files": [[os.path.basename(f), os.path.getsize(f), os.stat(f).st_mtime_ns]
                    for f in files]}


def convert_hf_to_orbax(hf_dir: str, out_dir: str, *, overwrite: bool = False,
                        config_overrides: Optional[dict] = None,
                        shardings: Optional[Callable[[keys.Param, tuple], Any]] = None,
                        progress: bool = True,
                        after_item: Optional[Callable[[str], None]] = None) -> str:
  """Converts the HF checkpoint `hf_dir` into a converted Orbax checkpoint at `out_dir`.

  config_overrides: ModelConfig fields to change, e.g. {"param_dtype": "float32"} (the
    stored dtype; routers stay float32).
  shardings: None for single-host numpy writes; or a function (param, per-layer shape) ->
    jax.sharding.Sharding, with which each param is placed before Orbax writes it (every
    process then writes its own shards).
  after_item: called with each item's name once it is committed (tests interrupt here).
  Returns out_dir. Raises CheckpointError (bad input) or FileExistsError (out_dir exists
  and is not empty, unless overwrite) before writing anything.
  """
  hf_dir, out_dir = os.fspath(hf_dir), os.path.abspath(os.fspath(out_dir))
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"convert_hf: {hf_dir!r} is not a directory")
  cfg = read_hf_config(hf_dir, **(config_overrides or {}))
  tensors = inventory(hf_dir)
  plan = plan_import(cfg, tensors)
  check_output_dir(out_dir, overwrite, flag="--overwrite (overwrite=True)")

  staging = out_dir + ".partial"
  state = {"format": converted.FORMAT, "model": cfg.to_dict(),
           "source": {"dir": os.path.abspath(hf_dir), **_fingerprint(hf_dir, tensors)}}
  _prepare_staging(staging, state, overwrite)

  sources = {s.param: s for s in plan}
  work = converted.items(cfg, (s.param for s in plan))
  bar = Progress(f"convert {os.path.basename(out_dir)}",
                 sum(len(s.tensors) for s in plan), sum(s.nbytes for s in plan),
                 enabled=progress)
  records = {}
  for item in work:
    record = {"leaves": item.leaves(cfg, lambda p: param_dtype(cfg, p.rule)),
              "tensors": [t.key for p in item.params for t in sources[p].tensors]}
    records[item.name] = record["leaves"]
    item_bytes = sum(sources[p].nbytes for p in item.params)
    item_tensors = sum(len(sources[p].tensors) for p in item.params)
    if converted.item_is_complete(staging, item.name, record):
      bar.advance(item_tensors, item_bytes, skipped=True)
      continue
    _remove_item(staging, item.name)
    tree = {}
    for param in item.params:
      value = read_param(sources[param], cfg)
      if shardings is not None:
        value = jax.device_put(value, shardings(param, value.shape))
      tree[param.path] = value
      bar.advance(len(sources[param].tensors), sources[param].nbytes)
    converted.save_item(staging, item.name, converted.nest(tree), record,
                        split_first_axis=any(p.rule.per_expert for p in item.params))
    del tree, value
    release_free_memory()
    if after_item is not None:
      after_item(item.name)
  bar.close()
  converted.copy_sidecar_files(hf_dir, staging)
  write_json(os.path.join(staging, converted.MANIFEST),
             {"format": converted.FORMAT, "version": converted.VERSION, "model": cfg.to_dict(),
              "source": state["source"], "items": records})
  os.remove(os.path.join(staging, PROGRESS_FILE))
  publish(staging, out_dir)
  return out_dir


def _prepare_staging(staging: str, state: dict, overwrite: bool) -> None:
  """Starts `staging`, or resumes it if it holds this same conversion."""
  progress_file = os.path.join(staging, PROGRESS_FILE)
  if os.path.isdir(staging) and not overwrite:
    previous = read_json(progress_file) if os.path.isfile(progress_file) else None
    if previous != state:
      what = "another source or config" if previous else "something that is not a conversion"
      raise FileExistsError(
          f"{staging} holds an unfinished conversion of {what} (was: "
          f"{(previous or {}).get('source', {}).get('dir')!r}); pass --overwrite "
          "(overwrite=True) to discard it, or convert into another directory")
    print(f"Resuming the conversion in {staging}", flush=True)
    return
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(os.path.join(staging, converted.ITEMS))
  write_json(progress_file, state)


def _remove_item(staging: str, name: str) -> None:
  """Clears what an interrupted save of `name` may have left (Orbax's temporary directory,
  a committed item whose done-record was never written)."""
  items_dir = os.path.join(staging, converted.ITEMS)
  for entry in os.listdir(items_dir):
    if entry == name or entry.startswith(name + ".orbax-checkpoint-tmp") or (
        entry == name + ".done.json"):
      path = os.path.join(items_dir, entry)
      if os.path.isdir(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
