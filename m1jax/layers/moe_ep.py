"""Expert parallelism for the sparse MoE (docs/MODEL.md §7.4), in `jax.shard_map`.

The experts' E dim is split over the mesh axis the `experts` logical axis maps to (`expert`);
tokens are split over the batch and length axes, as the activations are. Every device routes
its own tokens (no global sort), sends each (token, expert) assignment to the device holding
that expert, runs its local experts through `moe.expert_ffn_grouped` (the one grouped-matmul
call site), and sends the results back. Two exchanges compute the same function:

  * "ragged": dropless. Each device sorts its assignments by expert and ships contiguous
    per-destination runs with `jax.lax.ragged_all_to_all`; the receive buffer holds the worst
    case (every source sends all its tokens' choices of this device's experts:
    EP * N_loc * min(R, E_loc) rows). XLA:CPU cannot run the op (UNIMPLEMENTED); TPU can.
  * "padded": a fixed capacity C per (source device, expert) and `jax.lax.all_to_all`, which
    every backend runs. C = ceil(moe_capacity_factor * N_loc * R / E), capped at N_loc (a
    token chooses an expert at most once, so C = N_loc can never drop: any factor >= E / R is
    exact). Assignments past C are dropped (their expert output is zero, the other top-k
    weights are not renormalised) and counted in RouterStats.dropped.
  * "auto": ragged when lowering for TPU, padded elsewhere.

The expert weights' F dim may be split over `tensor` (the `mlp` rule): SwiGLU is elementwise
in F and the down projection contracts F, so each tensor shard produces a partial sum of the
expert output and one psum over `tensor` of the combined [N, M] output restores it.
"""
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from m1jax.config import MOE_ALL_TO_ALLS
from m1jax.layers import moe
from m1jax.layers import params as lp
from pallas_kernels.lightning_chunk import target_platform

EXCHANGES = MOE_ALL_TO_ALLS
# Platforms whose XLA runs ragged-all-to-all ("auto" picks the ragged exchange there).
RAGGED_PLATFORMS = ("tpu",)


class Layout(NamedTuple):
  """Mesh axes of the expert-parallel dispatch, read from the logical-axis rules."""
  expert: tuple[str, ...]    # axes the experts' E dim is split over (the all-to-all axes)
  tensor: tuple[str, ...]    # axes the experts' F dim is split over (psum of partial outputs)
  batch: tuple[str, ...]     # axes the token batch is split over
  length: tuple[str, ...]    # axes the sequence is split over

  def size(self, mesh, which: str) -> int:
    return math.prod(mesh.shape[a] for a in getattr(self, which))


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def layout(rules=None) -> Layout:
  """The mesh axes of each role under `rules` (default: the active rules, else the project's
  table), so this module never names a mesh axis itself."""
  if rules is None:
    rules = nn.get_logical_axis_rules()
    if not rules:
      from m1jax.sharding import LOGICAL_AXIS_RULES  # deferred: sharding imports layers
      rules = LOGICAL_AXIS_RULES
  w_spec = nn.logical_to_mesh_axes((lp.EXPERTS, lp.EMBED, lp.MLP), rules)
  x_spec = nn.logical_to_mesh_axes((lp.BATCH, lp.LENGTH), rules)
  return Layout(expert=_axes(w_spec[0]), tensor=_axes(w_spec[2]), batch=_axes(x_spec[0]),
                length=_axes(x_spec[1]))


def expert_parallel_size(mesh=None, rules=None) -> int:
  """How many ways the current (abstract) mesh splits the experts; 1 without a mesh."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  if mesh is None or mesh.empty:
    return 1
  names = set(mesh.axis_names)
  return math.prod(mesh.shape[a] for a in layout(rules).expert if a in names)


def resolve_exchange(kind: str) -> str:
  """"auto" -> "ragged" when lowering for a platform that runs ragged_all_to_all, else
  "padded". The lowering target, not jax.default_backend(): a TPU program compiled ahead of
  time on a CPU host must get the ragged exchange."""
  if kind not in EXCHANGES:
    raise ValueError(f"moe_all_to_all={kind!r}; expected one of {EXCHANGES}")
  if kind != "auto":
    return kind
  return "ragged" if target_platform() in RAGGED_PLATFORMS else "padded"


def capacity(tokens: int, top_k: int, num_experts: int, factor: float) -> int:
  """Rows per (source device, expert) of the padded exchange for `tokens` local tokens."""
  if not factor > 0:
    raise ValueError(f"moe_capacity_factor={factor!r}; it must be > 0 (capacity per "
                     "(device, expert) = factor * local tokens * top_k / experts)")
  return max(1, min(tokens, math.ceil(factor * tokens * top_k / num_experts)))


# ------------------------------------------------------------------ ragged all-to-all
def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name):
  """`jax.lax.ragged_all_to_all`'s documented semantics built from a dense all_to_all of
  [axis size, operand rows] blocks: runs on every backend (XLA:CPU included) at the cost of
  moving whole padded blocks. Tests use it to check the ragged path's offset bookkeeping on
  CPU, where the real op is UNIMPLEMENTED. One slice per peer (offsets of length axis size).
  """
  rows = operand.shape[0]
  i_I = jnp.arange(rows, dtype=jnp.int32)
  src_DI = input_offsets[:, None] + i_I[None, :]
  sent_DI = i_I[None, :] < send_sizes[:, None]
  blocks_DIM = jnp.where(sent_DI[..., None],
                         jnp.take(operand, jnp.clip(src_DI, 0, rows - 1), axis=0), 0)
  got_SIM = jax.lax.all_to_all(blocks_DIM, axis_name, 0, 0)            # [source, rows, ...]
  where_S = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
  dst_SI = jnp.where(i_I[None, :] < recv_sizes[:, None], where_S[:, None] + i_I[None, :],
                     output.shape[0])                                  # out of range: skipped
  return output.at[dst_SI.reshape(-1)].set(got_SIM.reshape((-1,) + output.shape[1:]),
                                           mode="drop")


def _exclusive_cumsum(x, axis):
  return jnp.cumsum(x, axis=axis) - x


def _ragged_dispatch(x_NM, experts_NR, w1, w3, w2, *, axis, ep, exchange):
  """Dropless exchange; returns y_NRM (expert outputs per assignment, partial over tensor)."""
  N, M = x_NM.shape
  R = experts_NR.shape[1]
  E_loc = w1.shape[0]
  E = E_loc * ep
  me = jax.lax.axis_index(axis)
  experts_A = experts_NR.reshape(-1)                                   # a = n * R + r
  order_A = jnp.argsort(experts_A, stable=True)
  x_AM = x_NM[order_A // R]                     # local assignments, by expert = by device
  counts_E = jnp.bincount(experts_A, length=E).astype(jnp.int32)
  # Everyone's per-expert counts (EP x E ints) give every offset without more exchanges.
  counts_SDL = jax.lax.all_gather(counts_E, axis).reshape(ep, ep, E_loc)
  sizes_SD = counts_SDL.sum(-1)                                        # source -> destination
  send_D = sizes_SD[me]
  send_off_D = _exclusive_cumsum(send_D, 0)
  # Source s's rows land on destination d after those of sources < s.
  land_SD = _exclusive_cumsum(sizes_SD, 0)
  recv_S = sizes_SD[:, me]
  recv_off_S = land_SD[:, me]
  buffer_rows = ep * N * min(R, E_loc)
  recv_XM = exchange(x_AM, jnp.zeros((buffer_rows, M), x_AM.dtype), send_off_D, send_D,
                     land_SD[me], recv_S, axis_name=axis)
  # Received rows come as (source, local expert) runs; regroup them by local expert.
  ends_K = jnp.cumsum(counts_SDL[:, me, :].reshape(-1))                # k = s * E_loc + l
  run_X = jnp.searchsorted(ends_K, jnp.arange(buffer_rows, dtype=jnp.int32), side="right")
  local_X = jnp.where(run_X < ep * E_loc, run_X % E_loc, E_loc)       # E_loc: empty row
  order_X = jnp.argsort(local_X, stable=True)
  group_sizes_L = counts_SDL[:, me, :].sum(0)
  y_grouped = moe.expert_ffn_grouped(recv_XM[order_X], w1, w3, w2, group_sizes_L)
  y_XM = jnp.zeros_like(y_grouped).at[order_X].set(y_grouped)
  # Back to the sources: where each source's run started in its own sorted buffer.
  back_off_S = _exclusive_cumsum(sizes_SD, 1)[:, me]
  y_AM = exchange(y_XM, jnp.zeros((N * R, M), y_XM.dtype), recv_off_S, recv_S, back_off_S,
                  send_D, axis_name=axis)
  y_NRM = jnp.zeros_like(y_AM).at[order_A].set(y_AM).reshape(N, R, M)
  return y_NRM, jnp.zeros((), jnp.int32)


def _padded_dispatch(x_NM, experts_NR, w1, w3, w2, mask_N, *, axis, ep, cap):
  """Fixed-capacity exchange; returns (y_NRM partial over tensor, dropped assignments of
  unmasked tokens on this device)."""
  N, M = x_NM.shape
  R = experts_NR.shape[1]
  E_loc = w1.shape[0]
  E = E_loc * ep
  experts_A = experts_NR.reshape(-1)
  # Slot of each assignment = how many earlier local assignments chose the same expert.
  one_hot_AE = jax.nn.one_hot(experts_A, E, dtype=jnp.int32)
  slot_A = jnp.sum((jnp.cumsum(one_hot_AE, axis=0) - 1) * one_hot_AE, axis=1)
  keep_A = slot_A < cap
  row_A = jnp.where(keep_A, experts_A * cap + slot_A, E * cap)        # E * cap: dropped
  send_XM = jnp.zeros((E * cap, M), x_NM.dtype).at[row_A].set(
      jnp.repeat(x_NM, R, axis=0), mode="drop")
  # Experts are laid out device-major, so splitting the rows EP ways sends each block of
  # E_loc * cap rows to the device holding those experts.
  recv_SLCM = jax.lax.all_to_all(send_XM, axis, 0, 0, tiled=True).reshape(ep, E_loc, cap, M)
  x_LXM = recv_SLCM.transpose(1, 0, 2, 3).reshape(E_loc * ep * cap, M)
  # Every local expert gets ep * cap rows; empty slots are zero rows with zero output.
  group_sizes_L = jnp.full((E_loc,), ep * cap, jnp.int32)
  y_LXM = moe.expert_ffn_grouped(x_LXM, w1, w3, w2, group_sizes_L)
  y_SLCM = y_LXM.reshape(E_loc, ep, cap, M).transpose(1, 0, 2, 3).reshape(E * cap, M)
  back_XM = jax.lax.all_to_all(y_SLCM, axis, 0, 0, tiled=True)
  y_AM = jnp.where(keep_A[:, None], back_XM[jnp.minimum(row_A, E * cap - 1)], 0)
  dropped = jnp.sum(jnp.where(keep_A, 0, jnp.repeat(mask_N, R))).astype(jnp.int32)
  return y_AM.reshape(N, R, M), dropped


# ------------------------------------------------------------------ the block
def check_layout(mesh, lay: Layout, *, num_experts: int, intermediate_size: int,
                 batch: int, length: int) -> None:
  """ValueErrors naming the config key / shape and the mesh axes that do not divide it."""
  def ways(which):
    return lay.size(mesh, which), "·".join(getattr(lay, which)) or "-"
  ep, ep_axes = ways("expert")
  if num_experts % ep:
    raise ValueError(f"num_local_experts={num_experts} is not divisible by the expert-"
                     f"parallel mesh axes {ep_axes} = {ep}; choose an expert axis size that "
                     "divides the expert count")
  tp, tp_axes = ways("tensor")
  if intermediate_size % tp:
    raise ValueError(f"intermediate_size={intermediate_size} is not divisible by the mesh "
                     f"axes {tp_axes} = {tp} that split the experts' F dim")
  for name, size, which in (("batch", batch, "batch"), ("sequence length", length, "length")):
    n, axes = ways(which)
    if size % n:
      raise ValueError(f"expert parallelism: the MoE input's {name} {size} is not divisible "
                       f"by the mesh axes {axes} = {n} it is split over")


def sparse_moe_ep(h_BTM, token_mask_BT, router_ME, w1_EMF, w3_EMF, w2_EFM, *, top_k: int,
                  dtype, exchange: str = "auto", capacity_factor: float = 2.0,
                  ragged_exchange=jax.lax.ragged_all_to_all):
  """The MoE block with experts split over the current mesh's expert axes: SparseMoE's
  function (route on h, experts in `dtype`, combine in float32).

  Returns (y_BTM in `dtype`, RouterStats summed over all tokens, dropped included).
  `ragged_exchange` replaces jax.lax.ragged_all_to_all (tests pass
  `emulated_ragged_all_to_all` to run the ragged path on CPU).
  """
  mesh = jax.sharding.get_abstract_mesh()
  lay = layout()
  B, T, M = h_BTM.shape
  E, _, F = w1_EMF.shape
  check_layout(mesh, lay, num_experts=E, intermediate_size=F, batch=B, length=T)
  kind = resolve_exchange(exchange)
  ep = lay.size(mesh, "expert")
  n_loc = (B // lay.size(mesh, "batch")) * (T // lay.size(mesh, "length"))
  cap = capacity(n_loc, top_k, E, capacity_factor)
  mask_BT = (jnp.ones((B, T), jnp.float32) if token_mask_BT is None
             else token_mask_BT.astype(jnp.float32))
  axis = lay.expert if len(lay.expert) > 1 else lay.expert[0]
  token_axes = lay.batch + lay.length

  def local(h_btm, mask_bt, router, w1, w3, w2):
    b, t, _ = h_btm.shape
    x_NM = h_btm.reshape(b * t, M)
    mask_N = mask_bt.reshape(b * t)
    probs_NE, weights_NR, experts_NR = moe.route(x_NM, router, top_k)
    x_NM = x_NM.astype(dtype)
    if kind == "ragged":
      y_NRM, dropped = _ragged_dispatch(x_NM, experts_NR, w1, w3, w2, axis=axis, ep=ep,
                                        exchange=ragged_exchange)
    else:
      y_NRM, dropped = _padded_dispatch(x_NM, experts_NR, w1, w3, w2, mask_N, axis=axis,
                                        ep=ep, cap=cap)
    # Combine in float32 (as the local path), then sum the tensor shards' partial outputs.
    y_NM = jnp.einsum("nr,nrm->nm", weights_NR, y_NRM, preferred_element_type=jnp.float32)
    if lay.tensor:
      y_NM = jax.lax.psum(y_NM, lay.tensor)
    stats = moe.router_stats(probs_NE, experts_NR, mask_N)._replace(dropped=dropped)
    stats = jax.lax.psum(stats, token_axes)
    return y_NM.astype(dtype).reshape(b, t, M), stats

  x_spec = PartitionSpec(lay.batch or None, lay.length or None)
  w_spec = PartitionSpec(lay.expert, None, lay.tensor or None)
  w2_spec = PartitionSpec(lay.expert, lay.tensor or None, None)
  stats_spec = moe.RouterStats(*(PartitionSpec(),) * len(moe.RouterStats._fields))
  # Weights go in cast to the compute dtype, so the all-gather over their FSDP axes at the
  # shard_map entry moves compute-dtype bytes. check_vma=False: the TPU grouped matmul
  # (Pallas megablox) declares outputs without varying-mesh-axes types, which the checker
  # rejects; the outputs' replication is by construction (psums above), and the tests
  # compare every gradient with one device's.
  y_BTM, stats = jax.shard_map(
      local, in_specs=(x_spec, x_spec, PartitionSpec(), w_spec, w_spec, w2_spec),
      out_specs=(x_spec, stats_spec), check_vma=False)(
          h_BTM, mask_BT, router_ME.astype(jnp.float32), w1_EMF.astype(dtype),
          w3_EMF.astype(dtype), w2_EFM.astype(dtype))
  return y_BTM, stats
