"""Sequence-parallel softmax attention: each `sequence` shard keeps its queries and
all-gathers K and V (and the key positions and segment ids) along the sequence.

Why an explicit shard_map rather than leaving it to GSPMD with K/V constrained to a whole
sequence: GSPMD is exact either way, but it picks WHAT to gather. On the tiny model with
fsdp=4,sequence=2 it all-gathered the layer's [B,T,M] input at the input norm and computed
K/V redundantly for the whole sequence on every shard (XLA's choice, read from the compiled
HLO; M = K·D there, so both cost the same to it). In the release M = 6144 while K·D = 1024,
so gathering the input moves 6x the bytes of K/V. Here the collective is fixed: one tiled
all-gather of K and of V ([B,T,K,D], 4 KiB per token in bf16 for 8 KV heads) and of the
[B,T] int key positions and segment ids; its transpose is a reduce-scatter of dK and dV.

Masks stay in GLOBAL positions: each shard's queries carry their own global positions and
the keys the gathered ones, so the causal test (key position <= query position) and the
segment test mean what they mean on one device. Runs the pure-JAX implementations, which
take separate query and key lengths: "xla" (m1jax.layers.softmax_attention) and
"blockwise" (m1jax.ops.blockwise_attention); the kernels (splash, cudnn) mask by token index
and keep their own shard_map, which gathers the whole sequence (WORKSPACE_NOTES.md).
"""
import flax.linen as nn
import jax
from jax.sharding import PartitionSpec

from m1jax.layers import params as lp
from m1jax.ops.linear_attention_sp import SEQUENCE_AXIS, dividing_axes, sequence_shards

__all__ = ["SP_IMPLS", "attend_sp"]

# The implementations that take queries and keys of different lengths.
SP_IMPLS = ("xla", "blockwise")


def _local_fn(name: str):
  # Imported here: the layer module imports attention_impl, which imports this one.
  from m1jax.layers.softmax_attention import causal_gqa_attention
  from m1jax.ops.blockwise_attention import blockwise_gqa_attention
  return {"xla": causal_gqa_attention, "blockwise": blockwise_gqa_attention}[name]


def attend_sp(name: str, q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT,
              segment_ids_BT=None):
  """Cache-free causal GQA attention with T split over `sequence` (name in SP_IMPLS).

  Same arguments and result as attention_impl.attend's xla/blockwise paths. Must be traced
  under a mesh with `sequence` > 1; batch and heads split as the active logical axis rules
  lay q out (heads only when q and kv heads take the same mesh axes, so each shard holds
  whole groups; an axis that does not divide its dimension is replicated instead). Raises
  ValueError when T is not divisible by the `sequence` axis.
  """
  if name not in SP_IMPLS:
    raise ValueError(f"attend_sp: impl {name!r} does not take split queries; use one of "
                     f"{SP_IMPLS}")
  shards = sequence_shards()
  T = q_BTHD.shape[1]
  if T % shards:
    raise ValueError(f"softmax attention: sequence length T={T} (q shape {q_BTHD.shape}) is "
                     f"not divisible by mesh axes {SEQUENCE_AXIS} = {shards}.")
  batch = dividing_axes(q_BTHD.shape[0], nn.logical_to_mesh_axes((lp.BATCH,))[0])
  heads = nn.logical_to_mesh_axes((lp.HEADS,))[0]
  if (heads != nn.logical_to_mesh_axes((lp.KV_HEADS,))[0]
      or dividing_axes(k_BTKD.shape[2], heads) is None
      or dividing_axes(q_BTHD.shape[2], heads) is None):
    heads = None
  qkv = PartitionSpec(batch, SEQUENCE_AXIS, heads, None)
  row = PartitionSpec(batch, SEQUENCE_AXIS)
  fn = _local_fn(name)

  def body(q, k, v, q_pos, k_pos, seg):
    gather = lambda x: jax.lax.all_gather(x, SEQUENCE_AXIS, axis=1, tiled=True)
    k_seg = None if seg is None else gather(seg)
    return fn(q, gather(k), gather(v), q_pos, gather(k_pos), seg, k_seg)

  # check_vma=False: the local implementations (custom_vjp, lax.cond, scans) carry no
  # varying-axis types; shard_map's transpose then handles replicated inputs itself.
  return jax.shard_map(body, in_specs=(qkv, qkv, qkv, row, row,
                                       PartitionSpec() if segment_ids_BT is None else row),
                       out_specs=qkv, check_vma=False)(
      q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT, segment_ids_BT)
