"""Parameter declaration and activation constraints with logical axis names.

Every parameter is declared through `logical_param`, so it carries logical axes
(`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`, `experts`, `mlp`, ...); activations are
pinned with `constrain` under the same names plus `batch`, `length`, `kv_length`. The rules in
m1jax.sharding map them to mesh axes. Modules never name mesh axes.

Imported as `lp` ("logical partitioning"): `P` means PartitionSpec everywhere in JAX.
"""
from typing import Callable, Sequence

import flax.linen as nn
import jax
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
# Activation axes, for sharding constraints (activations also use the names above).
BATCH = "batch"
LENGTH = "length"
# The key/value sequence axis of a softmax KV cache: never sharded, so every query shard
# sees all cached keys. (Cache-free calls keep K/V split along `length` and all-gather them
# explicitly: m1jax/ops/softmax_attention_sp.py.)
KV_LENGTH = "kv_length"


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


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Pins activation `x` to the layout its logical `axes` map to under the active rules.

  A no-op outside `nn.logical_axis_rules` (single device, inference). Without these, XLA is
  free to choose activation layouts from the weights' FSDP sharding, e.g. to contract the
  lm_head over its sharded embed dim and all-reduce full [B,T,V] logits on every chip.
  """
  if x.ndim != len(axes):
    raise ValueError(f"constrain: array of shape {x.shape} and axes {tuple(axes)} differ in "
                     "rank")
  return nn.with_logical_constraint(x, tuple(axes))
