"""What a cached call tells the layers about the cache; here, not in m1jax.inference, so the
layers import it without a cycle (m1jax.inference imports the model)."""
from typing import Optional

import flax
import jax
import jax.numpy as jnp

# Key position of an empty or padded slot: never <= any query position, so never visible.
EMPTY_POSITION = jnp.iinfo(jnp.int32).max


@flax.struct.dataclass
class CacheInfo:
  """Per-call cache facts shared by every layer (a frozen pytree: it enters nn.scan as a
  broadcast input).

  index: [] int32, the first slot this call writes (the same for every row).
  kv_positions_BS: [B,S_max] int32 key position of every slot ALREADY in the cache
    (EMPTY_POSITION where empty, padded or not yet written); None for a lightning-only model.
  """
  index: jax.Array
  kv_positions_BS: Optional[jax.Array] = None


def key_positions(positions_BT: jax.Array, token_mask_BT: Optional[jax.Array]) -> jax.Array:
  """Key positions of the T tokens of a call: padded tokens (mask 0) are nobody's keys."""
  if token_mask_BT is None:
    return positions_BT
  return jnp.where(token_mask_BT != 0, positions_BT, EMPTY_POSITION)
