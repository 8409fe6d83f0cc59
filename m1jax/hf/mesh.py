"""Shardings for conversion: the NamedSharding of every param on a mesh
(`m1jax.sharding.make_mesh("fsdp=4,expert=2")`) under the logical-axis rules.

Conversion writes through these when given a mesh: each param is placed with its sharding
before Orbax writes it, so every process writes only its own shards; `load_converted`
restores each layer straight into its slice's sharding.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax import sharding
from m1jax.config import ModelConfig
from m1jax.hf import keys


def model_shardings(config: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  """Tree of NamedShardings in the model's param layout (from shapes only). Raises
  ValueError naming the param and dimension a mesh axis does not divide."""
  from m1jax.model import MiniMaxM1ForCausalLM
  boxed = jax.eval_shape(lambda: MiniMaxM1ForCausalLM(config).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)))["params"]
  return sharding.logical_shardings(nn.meta.unbox(boxed), nn.get_partition_spec(boxed), mesh)


def param_sharding_fn(config: ModelConfig, mesh: jax.sharding.Mesh
                      ) -> Callable[[keys.Param, tuple], jax.sharding.Sharding]:
  """(param, per-layer shape) -> its sharding: the model's, less the scanned axis."""
  tree = model_shardings(config, mesh)

  def param_sharding(param: keys.Param, shape: tuple) -> jax.sharding.Sharding:
    path, index = keys.param_location(config, param)
    target = tree
    for name in path:
      target = target[name]
    if index is None:
      return target
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*tuple(target.spec)[1:]))

  return param_sharding
