"""Meshes for conversion: "fsdp=4,expert=2" -> a jax Mesh over MESH_AXES, and the
NamedSharding of every param under the logical-axis rules (m1jax/sharding.py).

Conversion writes through these when given a mesh: each param is placed with its sharding
before Orbax writes it, so every process writes only its own shards; `load_converted`
restores each layer straight into its slice's sharding.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from m1jax.config import ModelConfig
from m1jax.hf import keys
from m1jax.sharding import MESH_AXES, mesh_partition_specs


def parse_mesh(spec: str, devices=None) -> jax.sharding.Mesh:
  """"fsdp=4,expert=2" -> Mesh of shape (data, fsdp, expert, tensor, sequence), unnamed
  axes of size 1, over the first prod(sizes) devices; one size may be -1 (the rest)."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  devices = jax.devices() if devices is None else devices
  rest = None
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, _, value = part.partition("=")
    if name not in sizes or not (value.isdigit() and int(value) >= 1 or
                                 value == "-1" and rest is None):
      raise ValueError(f"mesh {spec!r}: bad entry {part!r}; expected <axis>=<size> with axis "
                       f"in {MESH_AXES} (one size may be -1: the remaining devices)")
    if value == "-1":
      rest = name
    else:
      sizes[name] = int(value)
  if rest is not None:
    sizes[rest] = max(1, len(devices) // int(np.prod(list(sizes.values()))))
  count = int(np.prod(list(sizes.values())))
  if count > len(devices):
    raise ValueError(f"mesh {spec!r} needs {count} devices; {len(devices)} are visible")
  grid = np.asarray(devices[:count]).reshape(tuple(sizes.values()))
  return jax.sharding.Mesh(grid, MESH_AXES)


def model_shardings(config: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  """Tree of NamedShardings in the model's param layout (from shapes only)."""
  from m1jax.model import MiniMaxM1ForCausalLM
  boxed = jax.eval_shape(lambda: MiniMaxM1ForCausalLM(config).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  return jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec),
                      mesh_partition_specs(boxed),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def param_sharding_fn(config: ModelConfig, mesh: jax.sharding.Mesh
                      ) -> Callable[[keys.Param, tuple], jax.sharding.Sharding]:
  """(param, per-layer shape) -> its sharding: the model's, less the scanned axis."""
  tree = model_shardings(config, mesh)

  def sharding(param: keys.Param, shape: tuple) -> jax.sharding.Sharding:
    path, index = keys.param_location(config, param)
    target = tree
    for name in path:
      target = target[name]
    if index is None:
      return target
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*tuple(target.spec)[1:]))

  return sharding

