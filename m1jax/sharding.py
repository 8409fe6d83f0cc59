"""Meshes and the logical-axis rules: how logical parameter/activation axes map to mesh axes.

Mesh axes are `data, fsdp, expert, tensor, sequence` (size 1 where unused), built from a spec
string such as "fsdp=4,tensor=2" (`make_mesh`). Modules only name logical axes
(m1jax/layers/params.py); LOGICAL_AXIS_RULES is the one place that decides the layout (each
parameter's logical axes: docs/MODEL.md §8.2).

    mesh = make_mesh("fsdp=-1,tensor=2")
    with use_mesh(mesh):          # jax.set_mesh + the rules: activation constraints apply
      ...
"""
import contextlib
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from m1jax.layers import params as lp

MESH_AXES = ("data", "fsdp", "expert", "tensor", "sequence")
# The mesh axes a batch is split over (every axis but tensor and sequence).
BATCH_AXES = ("data", "fsdp", "expert")

# Flax gives each array dimension the FIRST rule (in this order) whose mesh axes are still
# unused by that array, so order is part of the layout:
#   * batch/length come first: an activation [batch, length, embed] takes data/fsdp/expert
#     for its batch, and its embed dim then finds every embed rule's axes taken (unsharded);
#   * experts claim `expert` before embed does, so expert weights [E, M, F] put E on
#     `expert` and M on (fsdp, sequence) (the fallback embed rule);
#   * every other embed dimension is sharded over (fsdp, sequence, expert): a weight that
#     skips an axis the batch is split over is replicated across it, and so are its Adam
#     moments (+6 GiB per chip measured for non-expert weights on expert=2).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    (lp.BATCH, BATCH_AXES),
    (lp.LENGTH, "sequence"),
    (lp.KV_LENGTH, None),
    (lp.EXPERTS, "expert"),
    (lp.VOCAB, "tensor"),
    (lp.EMBED, ("fsdp", "sequence", "expert")),
    (lp.EMBED, ("fsdp", "sequence")),
    (lp.HEADS, "tensor"),
    (lp.KV_HEADS, "tensor"),
    (lp.HEAD_DIM, None),
    (lp.MLP, "tensor"),
    (lp.LAYERS, None),
)


# ------------------------------------------------------------------ meshes
def parse_mesh_spec(spec: str) -> dict[str, int]:
  """"fsdp=4,tensor=2" -> {"fsdp": 4, "tensor": 2}; -1 = all remaining devices (at most one).

  Raises ValueError naming the offending entry and the valid axes.
  """
  sizes: dict[str, int] = {}
  for item in (spec or "").split(","):
    item = item.strip()
    if not item:
      continue
    name, eq, value = (s.strip() for s in item.partition("="))
    if name not in MESH_AXES:
      raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; mesh axes are "
                       f"{', '.join(MESH_AXES)}")
    if not eq:
      raise ValueError(f"mesh {spec!r}: axis {name!r} needs a size ({name}=N, or -1 for all "
                       "remaining devices)")
    if name in sizes:
      raise ValueError(f"mesh {spec!r}: axis {name!r} is given twice")
    try:
      size = int(value)
    except ValueError:
      raise ValueError(f"mesh {spec!r}: {name}={value!r} is not an int") from None
    if size < 1 and size != -1:
      raise ValueError(f"mesh {spec!r}: {name}={size}; sizes are >= 1, or -1 for all "
                       "remaining devices")
    sizes[name] = size
  auto = [name for name, size in sizes.items() if size == -1]
  if len(auto) > 1:
    raise ValueError(f"mesh {spec!r}: more than one axis is -1 ({', '.join(auto)}); at most "
                     "one axis takes the remaining devices")
  return sizes


def mesh_shape(spec: str, num_devices: int) -> tuple[int, ...]:
  """Sizes of MESH_AXES for `spec` on `num_devices` devices (-1 resolved, unnamed = 1)."""
  sizes = parse_mesh_spec(spec)
  fixed = math.prod(size for size in sizes.values() if size != -1)
  for name, size in sizes.items():
    if size == -1:
      if num_devices % fixed:
        raise ValueError(f"mesh {spec!r}: the fixed axes take {fixed} devices, which does "
                         f"not divide the {num_devices} devices, so {name}=-1 has no size")
      sizes[name] = num_devices // fixed
  shape = tuple(sizes.get(name, 1) for name in MESH_AXES)
  if math.prod(shape) != num_devices:
    raise ValueError(f"mesh {spec!r}: {' x '.join(f'{n}={s}' for n, s in zip(MESH_AXES, shape))}"
                     f" = {math.prod(shape)} devices, but there are {num_devices}; make the "
                     "product equal the device count (or give one axis -1)")
  return shape


def make_mesh(spec: str = "fsdp=-1", devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A Mesh over MESH_AXES (all five, unnamed ones of size 1) with Auto axis types.

  Auto, not jax.make_mesh's Explicit default: with Explicit axes jit and shard_map demand
  exactly matching input shardings, while the model only hints layouts through logical
  constraints. `devices` defaults to all devices (of every process).
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(spec, len(devices))
  try:
    # Lays the axes out along the physical topology (ICI rings on TPU).
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def describe(mesh: Mesh) -> str:
  """"data=1,fsdp=4,expert=1,tensor=2,sequence=1" for error messages and logs."""
  return ",".join(f"{name}={size}" for name, size in mesh.shape.items())


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Makes `mesh` current and the rules active, so `lp.constrain` pins activations. Needed
  while a step is traced (jit traces on its first call)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


# ------------------------------------------------------------------ logical -> mesh
def logical_param_axes(boxed_params: Any) -> Any:
  """Tree of logical-axis tuples (one per param) from `model.init(...)["params"]`."""
  return nn.get_partition_spec(boxed_params)


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def mesh_partition_specs(boxed_params: Any, rules=LOGICAL_AXIS_RULES) -> Any:
  """Tree of mesh PartitionSpecs for the params under `rules`."""
  return jax.tree.map(lambda spec: nn.logical_to_mesh_axes(spec, rules),
                      logical_param_axes(boxed_params), is_leaf=_is_spec)


def logical_shardings(abstract: Any, logical_specs: Any, mesh: Mesh,
                      rules=LOGICAL_AXIS_RULES, what: str = "param") -> Any:
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs) and its logical specs.

  Raises ValueError, naming the mesh, the leaf, the logical dimension and the mesh axes,
  when a dimension is not divisible by the mesh axes it is sharded over.
  """
  def one(path, leaf, logical):
    spec = nn.logical_to_mesh_axes(logical, rules)
    check_divisible(leaf.shape, spec, mesh, f"{what} {jax.tree_util.keystr(path)}",
                    tuple(logical))
    return NamedSharding(mesh, spec)
  flat_specs = jax.tree.leaves(logical_specs, is_leaf=_is_spec)
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  if len(flat) != len(flat_specs):
    raise ValueError(f"logical_shardings: {len(flat)} arrays but {len(flat_specs)} specs")
  return jax.tree.unflatten(treedef, [one(p, leaf, s) for (p, leaf), s in zip(flat, flat_specs)])


def check_divisible(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh, where: str,
                    logical: Optional[Sequence[Any]] = None) -> None:
  """Raises ValueError if a dimension of `shape` does not divide over its mesh axes."""
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    ways = math.prod(mesh.shape[a] for a in axes)
    if shape[dim] % ways:
      name = f" ({logical[dim]!r})" if logical and logical[dim] else ""
      raise ValueError(
          f"mesh {describe(mesh)}: {where} has shape {tuple(shape)}; its dimension {dim}"
          f"{name} of size {shape[dim]} is not divisible by mesh axes "
          f"{'·'.join(axes)} = {ways}. Choose a mesh whose axes divide it (e.g. a smaller "
          f"{axes[0]}).")


def activation_sharding(mesh: Mesh, axes: Sequence[Optional[str]],
                        rules=LOGICAL_AXIS_RULES) -> NamedSharding:
  """The NamedSharding of an activation (e.g. a [batch, length] data array)."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(tuple(axes), rules))
