"""Parameter declaration with logical axis names.

Every parameter is declared through `logical_param`, so it carries logical axes
(`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `experts`, `mlp`, ...); the mesh rules in
m1jax.sharding map them to mesh axes. Modules never name mesh axes.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from m1jax.config import ModelConfig

# Logical axis names, declared once.
VOCAB = "vocab"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
HEAD_DIM = "head_dim"
EXPERTS = "experts"
MLP = "mlp"
LAYERS = "layers"  # the stacked (scanned) layer-group axis
# Activation axes, for sharding constraints.
BATCH = "batch"
LENGTH = "length"


def param_dtype(config: ModelConfig) -> jnp.dtype:
  return jnp.dtype(config.param_dtype)


def compute_dtype(config: ModelConfig) -> jnp.dtype:
  return jnp.dtype(config.dtype)


def kernel_init(config: ModelConfig) -> Callable:
  return nn.initializers.normal(stddev=config.initializer_range)


def logical_param(module: nn.Module, name: str, init: Callable, shape: Sequence[int],
                  axes: Sequence[str | None], dtype) -> jnp.ndarray:
  """Declares `module.<name>` with logical axis names attached to its metadata."""
  if len(shape) != len(axes):
    raise ValueError(f"{name}: shape {tuple(shape)} and axes {tuple(axes)} differ in rank")
  return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                      dtype)
