"""Parameter accounting from shapes alone (jax.eval_shape: nothing is allocated).

`active` follows the M1 report's convention (docs/MODEL.md §3.3): parameters a token passes
through, with only top_k / E of the experts, and neither the embedding nor the lm_head.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM

LIGHTNING_LEAVES = ("qkv_proj", "output_gate", "out_proj")
SOFTMAX_LEAVES = ("q_proj", "k_proj", "v_proj", "o_proj")
EXPERT_LEAVES = ("w1", "w2", "w3")
# Components that are looked up or projected once per token but not counted as "active".
NOT_ACTIVE = ("embedding", "lm_head")


def abstract_params(config: ModelConfig) -> Any:
  """ShapeDtypeStructs of the model's params, without allocating them."""
  model = MiniMaxM1ForCausalLM(config)
  ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), ids)
  return nn.meta.unbox(variables["params"])


def component_of(path: tuple[str, ...]) -> str:
  """Which part of the model a param path belongs to."""
  leaf = path[-1]
  if path[0] == "embed_tokens":
    return "embedding"
  if path[0] == "lm_head":
    return "lm_head"
  if path[0] == "norm":
    return "final_norm"
  if leaf in EXPERT_LEAVES:
    return "experts"
  if leaf == "router":
    return "router"
  if leaf in LIGHTNING_LEAVES or ("self_attn" in path and "norm" in path):
    return "lightning_attention"
  if leaf in SOFTMAX_LEAVES:
    return "softmax_attention"
  if "layernorm" in path[-2]:
    return "layer_norms"
  raise ValueError(f"param_count: unclassified parameter {'/'.join(path)}")


def count_params(config: ModelConfig) -> dict[str, Any]:
  """{"components": {name: count}, "total_params", "active_params", "bytes_bf16": {...}}."""
  counts: dict[str, int] = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]:
    path = tuple(str(getattr(k, "key", k)) for k in key_path)
    name = component_of(path)
    counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
  total = sum(counts.values())
  expert_fraction = config.num_experts_per_tok / config.num_local_experts
  active = sum(n * (expert_fraction if name == "experts" else 1)
               for name, n in counts.items() if name not in NOT_ACTIVE)
  return {
      "components": dict(sorted(counts.items())),
      "bytes_bf16": {name: 2 * n for name, n in sorted(counts.items())},
      "total_params": total,
      # The release stores the router in float32 and everything else in bf16 (docs/MODEL.md §3.3);
      # this must equal its index's total_size for the released config.
      "checkpoint_bytes": 2 * total + 2 * counts.get("router", 0),
      "active_params": int(round(active)),
  }
