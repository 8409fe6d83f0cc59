"""Logical-axis rules: how the model's logical parameter/activation axes map to mesh axes.

Mesh axes are `data, fsdp, expert, tensor, sequence` (size 1 where unused). Modules only
name logical axes (m1jax/layers/params.py); these rules are the one place that decides the
layout (each parameter's logical axes: docs/MODEL.md §8.2).
"""
from typing import Any

import flax.linen as nn
import jax

from m1jax.layers import params as P

MESH_AXES = ("data", "fsdp", "expert", "tensor", "sequence")

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    (P.VOCAB, "tensor"),
    (P.EMBED, "fsdp"),
    (P.HEADS, "tensor"),
    (P.KV_HEADS, "tensor"),
    (P.HEAD_DIM, None),
    (P.EXPERTS, "expert"),
    (P.MLP, "tensor"),
    (P.LAYERS, None),
    (P.BATCH, ("data", "fsdp", "expert")),
    (P.LENGTH, "sequence"),
)


def logical_param_axes(boxed_params: Any) -> Any:
  """Tree of logical-axis tuples (one per param) from `model.init(...)["params"]`."""
  return nn.get_partition_spec(boxed_params)


def mesh_partition_specs(boxed_params: Any, rules=LOGICAL_AXIS_RULES) -> Any:
  """Tree of mesh PartitionSpecs for the params under `rules`."""
  return jax.tree.map(lambda spec: nn.logical_to_mesh_axes(spec, rules),
                      logical_param_axes(boxed_params),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
