"""TPU softmax attention: JAX's Pallas splash attention kernel in its MQA form, one kernel call
per (batch row, KV head) with that head's G query heads (GQA without repeating K/V).

Splash masks by token index, not position: causal by index, plus segment ids. That is the
layer's position mask whenever positions increase along each document (the model's default
positions and packed rows): padding keys (position EMPTY_POSITION) are put in segment 0,
which no real token has. A Mosaic kernel cannot be partitioned automatically, so on a
multi-device mesh the call runs inside jax.shard_map, batch and heads split as the logical
axis rules say (the sequence is gathered: every query needs every earlier key).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

# Splash tiles are 128-lane aligned; the sequence must fill whole tiles.
SEQ_MULTIPLE = 128
HEAD_DIM_MULTIPLE = 128
_BLOCK = 512


def supported(seq_len: int, head_dim: int) -> bool:
  return seq_len % SEQ_MULTIPLE == 0 and head_dim % HEAD_DIM_MULTIPLE == 0


def _kernel(T: int, G: int):
  # Imported here: Pallas TPU is loaded only when splash is used.
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as sk, splash_attention_mask as sm)
  block = min(_BLOCK, T)
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                        use_fused_bwd_kernel=True)
  mask = sm.MultiHeadMask([sm.CausalMask((T, T))] * G)
  return sk, sk.make_splash_mqa_single_device(mask, block_sizes=sizes)


def _local(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT):
  """Splash on one device's shard: [B,T,H,D] in q's dtype."""
  B, T, H, D = q_BTHD.shape
  K = k_BTKD.shape[2]
  G = H // K
  sk, kernel = _kernel(T, G)
  # Splash does not scale the logits; scale q (in fp32, then back) as the XLA path scales s.
  q_BKGTD = (q_BTHD.astype(jnp.float32) * D**-0.5).astype(q_BTHD.dtype)
  q_BKGTD = q_BKGTD.reshape(B, T, K, G, D).transpose(0, 2, 3, 1, 4)
  k_BKTD, v_BKTD = (x.transpose(0, 2, 1, 3) for x in (k_BTKD, v_BTKD))

  def one_row(q_KGTD, k_KTD, v_KTD, seg_T):
    ids = sk.SegmentIds(q=seg_T, kv=seg_T)
    return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_KGTD, k_KTD, v_KTD)

  o_BKGTD = jax.vmap(one_row)(q_BKGTD, k_BKTD, v_BKTD, segment_ids_BT)
  return o_BKGTD.transpose(0, 3, 1, 2, 4).reshape(B, T, H, D).astype(q_BTHD.dtype)


def _specs(batch_axis: str, heads_axis: str, kv_heads_axis: str):
  """Shard_map specs from the active logical axis rules: batch as the rules split it, q and
  kv heads only when both take the same mesh axes (each shard then holds whole groups)."""
  batch = nn.logical_to_mesh_axes((batch_axis,))[0]
  heads = nn.logical_to_mesh_axes((heads_axis,))[0]
  kv_heads = nn.logical_to_mesh_axes((kv_heads_axis,))[0]
  if heads != kv_heads:
    heads = None
  qkv = PartitionSpec(batch, None, heads, None)
  return qkv, PartitionSpec(batch, None)


def splash_gqa_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array,
                         segment_ids_BT: jax.Array, *, batch_axis: str = "batch",
                         heads_axis: str = "heads",
                         kv_heads_axis: str = "kv_heads") -> jax.Array:
  """Causal GQA attention of one cache-free call; [B,T,H,D].

  segment_ids_BT: int32, a key is visible to a query of the same id (padding in its own id).
  On a multi-device abstract mesh (jax.set_mesh) the kernel runs under jax.shard_map with
  specs from the logical axis names given (m1jax.layers.params names).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return _local(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT)
  qkv, seg = _specs(batch_axis, heads_axis, kv_heads_axis)
  return jax.shard_map(_local, mesh=mesh, in_specs=(qkv, qkv, qkv, seg), out_specs=qkv,
                       check_vma=False)(q_BTHD, k_BTKD, v_BTKD, segment_ids_BT)


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether this jax ships the splash kernel (jax.experimental.pallas.ops.tpu)."""
  try:
    _kernel(SEQ_MULTIPLE, 1)
  except ImportError:
    return False
  return True
