"""The train state on a mesh: shardings from the logical-axis rules, a sharded init.

    mesh = make_mesh("fsdp=4,tensor=2")              # m1jax.sharding
    state = init_train_state(model, tx, jax.random.key(0), mesh)

Nothing is ever materialised whole on one device: the state's shapes come from
`jax.eval_shape`, its shardings from each parameter's logical axes (m1jax/sharding.py), and
the init itself is jitted with those `out_shardings`, so every device computes only its
shards. Adam's moments mirror the params tree, so they take the params' shardings.
"""
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from m1jax import sharding

# Sequence length of the dummy ids `model.init` traces with (params do not depend on it).
_INIT_SEQ_LEN = 8


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _boxed_state(model, tx, rng) -> TrainState:
  """The state with every param (and Adam moment) still in its logical-axes box: optax maps
  over the boxes' values, so the moments keep the params' names."""
  boxed = model.init(rng, jnp.zeros((1, _INIT_SEQ_LEN), jnp.int32))["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=boxed, opt_state=tx.init(boxed))


def state_shardings(model, tx, mesh: Mesh, rules=sharding.LOGICAL_AXIS_RULES) -> TrainState:
  """NamedShardings of the whole train state on `mesh` (unnamed leaves replicated).

  Raises ValueError naming the mesh, the leaf and the dimension when a dimension does not
  divide over its mesh axes (e.g. 6 heads on tensor=4).
  """
  abstract = jax.eval_shape(functools.partial(_boxed_state, model, tx), jax.random.key(0))
  logical = nn.get_partition_spec(abstract)
  return sharding.logical_shardings(nn.meta.unbox(abstract), logical, mesh, rules,
                                    what="train state")


def abstract_train_state(model, tx, mesh: Mesh, shardings=None) -> TrainState:
  """ShapeDtypeStructs carrying their target shardings: what Orbax restores onto, and what
  an ahead-of-time compile lowers with. Allocates nothing."""
  shardings = state_shardings(model, tx, mesh) if shardings is None else shardings
  abstract = nn.meta.unbox(jax.eval_shape(functools.partial(_boxed_state, model, tx),
                                          jax.random.key(0)))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


def init_train_state(model, tx, rng: jax.Array, mesh: Mesh, shardings=None) -> TrainState:
  """A fresh train state, initialised directly in its shards on `mesh`.

  The values do not depend on the mesh (partitionable threefry), so one device and any
  mesh start from the same params.
  """
  shardings = state_shardings(model, tx, mesh) if shardings is None else shardings
  init = jax.jit(lambda r: nn.meta.unbox(_boxed_state(model, tx, r)), out_shardings=shardings)
  with sharding.use_mesh(mesh):
    return init(rng)


def train_state_from_params(params: Any, tx, mesh: Mesh, shardings: TrainState) -> TrainState:
  """A fresh train state (step 0, new optimizer state) around given params, e.g. converted
  weights (train.init_from), placed in `shardings`."""
  params = jax.device_put(params, shardings.params)
  init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                 out_shardings=shardings)
  with sharding.use_mesh(mesh):
    return init(params)
