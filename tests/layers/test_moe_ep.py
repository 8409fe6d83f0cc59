"""Expert parallelism (m1jax/layers/moe_ep.py) on 8 fake CPU devices: the MoE block and its
gradients equal one device's for both exchanges (ragged through a CPU emulation of
ragged_all_to_all), with an empty expert; the padded exchange drops exactly the assignments
past capacity and counts them; the ragged exchange compiles for a TPU topology; bad input.
The whole model under expert meshes: tests/train/test_mesh_combinations.py.
"""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from m1jax import sharding
from m1jax.hlo_bytes import all_to_all_bytes
from m1jax.layers import moe, moe_ep
from tests.helpers import tiny_config

B, T, M, F, E, R = 8, 4, 16, 24, 8, 2
EXACT = E / R  # capacity factor at which the padded exchange can never drop


def _inputs(seed=0):
  """h, router, w1, w3, w2 in float32. The router never picks expert 5 (an empty expert on
  every device) and prefers experts 0 and 1, so per-device loads are uneven."""
  rng = np.random.default_rng(seed)
  h = rng.standard_normal((B, T, M))
  router = rng.standard_normal((M, E))
  h[..., 0] = np.abs(h[..., 0]) + 1.0
  router[0, 5], router[0, :2] = -50.0, 3.0
  w1, w3 = (rng.standard_normal((E, M, F)) / np.sqrt(M) for _ in range(2))
  w2 = rng.standard_normal((E, F, M)) / np.sqrt(F)
  return tuple(jnp.asarray(a, jnp.float32) for a in (h, router, w1, w3, w2))


def _one_device(h, router, w1, w3, w2, keep_NR=None):
  """The local (dense reference) block; `keep_NR` zeroes the assignments it marks False."""
  x = h.reshape(-1, M)
  probs, weights, experts = moe.route(x, router, R)
  if keep_NR is not None:
    weights = weights * keep_NR
  y = moe.swiglu_dense(x, w1, w3, w2, weights, experts)
  return y.reshape(h.shape), moe.router_stats(probs, experts, None)


def _loss(y, stats):
  # Every output and router statistic reaches the loss, with distinct weights.
  return (jnp.sum(jnp.sin(y) * jnp.arange(M)[None, None, :]) + jnp.sum(stats.prob_E * jnp.arange(E))
          + jnp.sum(stats.selected_E))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.fixture(scope="module")
def reference():
  args = _inputs()
  loss, grads = jax.jit(jax.value_and_grad(lambda *a: _loss(*_one_device(*a)),
                                           argnums=range(5)))(*args)
  return args, _one_device(*args), loss, grads


@pytest.mark.parametrize("exchange, spec", [
    ("padded", "expert=8"), ("padded", "fsdp=2,expert=4"), ("padded", "data=2,expert=2,tensor=2"),
    ("ragged", "fsdp=2,expert=4"), ("ragged", "data=2,expert=2,tensor=2")])
def test_block_and_gradients_equal_one_device(reference, spec, exchange):
  args, (y_ref, stats_ref), loss_ref, grads_ref = reference
  # Ragged: the real op is UNIMPLEMENTED on XLA:CPU; the emulation has its documented
  # semantics, so this checks the offsets and regrouping (the op itself: the TPU compile).
  ragged = moe_ep.emulated_ragged_all_to_all

  def block(h, router, w1, w3, w2):
    return moe_ep.sparse_moe_ep(h, None, router, w1, w3, w2, top_k=R, dtype=jnp.float32,
                                exchange=exchange, capacity_factor=EXACT,
                                ragged_exchange=ragged)

  with sharding.use_mesh(sharding.make_mesh(spec)):
    (y, stats) = jax.jit(block)(*args)
    loss, grads = jax.jit(jax.value_and_grad(lambda *a: _loss(*block(*a)),
                                             argnums=range(5)))(*args)
  assert int(stats.dropped) == 0
  assert float(stats_ref.selected_E[5]) == 0  # expert 5 really is empty
  np.testing.assert_array_equal(stats.selected_E, stats_ref.selected_E)
  assert _rel(y, y_ref) <= 1e-5 and _rel(stats.prob_E, stats_ref.prob_E) <= 1e-6
  assert abs(float(loss) - float(loss_ref)) <= 1e-5 * abs(float(loss_ref))
  for name, g, r in zip(("h", "router", "w1", "w3", "w2"), grads, grads_ref):
    assert _rel(g, r) <= 1e-5, (spec, exchange, name, _rel(g, r))


def _independent_drops(experts_NR, mask_N, devices, cap):
  """keep_NR (assignment computed?) and the dropped count of unmasked tokens, by walking each
  device's tokens in order and filling each expert's `cap` slots first come, first served."""
  keep = np.ones(experts_NR.shape, bool)
  per_device = experts_NR.shape[0] // devices
  for d in range(devices):
    used = {}
    for n in range(d * per_device, (d + 1) * per_device):
      for r, e in enumerate(experts_NR[n]):
        used[e] = used.get(e, 0) + 1
        keep[n, r] = used[e] <= cap
  return keep, int(np.sum(~keep & (mask_N[:, None] > 0)))


def test_capacity_below_worst_case_drops_and_counts_exactly(reference):
  args, _, _, _ = reference
  h, router = args[:2]
  factor = 1.0  # cap = ceil(1 * 4 tokens * 2 / 8) = 1 row per (device, expert)
  mask = np.ones((B, T), np.float32)
  mask[1, 2:] = mask[6, :3] = 0  # padding: never counted as dropped
  cap = moe_ep.capacity(T, R, E, factor)
  _, _, experts = moe.route(h.reshape(-1, M), router, R)
  keep, dropped = _independent_drops(np.asarray(experts), mask.reshape(-1), 8, cap)
  assert cap == 1 and dropped > 0 and not keep.all()
  y_ref, _ = _one_device(*args, keep_NR=jnp.asarray(keep, jnp.float32))
  with sharding.use_mesh(sharding.make_mesh("expert=8")):
    y, stats = jax.jit(lambda *a: moe_ep.sparse_moe_ep(
        a[0], jnp.asarray(mask), *a[1:], top_k=R, dtype=jnp.float32, exchange="padded",
        capacity_factor=factor))(*args)
  assert int(stats.dropped) == dropped
  assert float(stats.tokens) == mask.sum()
  assert _rel(y, y_ref) <= 1e-5


def test_sparse_moe_uses_expert_parallelism_only_when_the_mesh_splits_experts(reference):
  """The module: EP (padded, counted drops) under expert=8; the local path elsewhere."""
  args, (y_ref, _), _, _ = reference
  h, router, w1, w3, w2 = args
  cfg = tiny_config((0,), hidden_size=M, intermediate_size=F, num_local_experts=E,
                    num_experts_per_tok=R, moe_impl="dense", moe_all_to_all="padded",
                    moe_capacity_factor=EXACT)
  params = {"router": router, "w1": w1, "w3": w3, "w2": w2}
  block = jax.jit(lambda p, x: moe.SparseMoE(cfg).apply({"params": p}, x))
  with sharding.use_mesh(sharding.make_mesh("expert=8")):
    assert moe_ep.expert_parallel_size() == 8 and moe_ep.resolve_exchange("auto") == "padded"
    text = block.lower(params, h).as_text()
    y, stats = block(params, h)
  assert "all_to_all" in text
  assert _rel(y, y_ref) <= 1e-5 and int(stats.dropped) == 0
  with sharding.use_mesh(sharding.make_mesh("fsdp=4,tensor=2")):
    assert moe_ep.expert_parallel_size() == 1
    assert "all_to_all" not in block.lower(params, h).as_text()
  assert moe_ep.expert_parallel_size() == 1  # no mesh at all


def test_bad_input_names_the_key_and_values(reference):
  args, _, _, _ = reference
  with pytest.raises(ValueError, match=r"moe_capacity_factor.*> 0.*got 0"):
    tiny_config(moe_capacity_factor=0)
  with pytest.raises(ValueError, match=r"moe_capacity_factor.*> 0.*got -1.5"):
    tiny_config(moe_capacity_factor=-1.5)
  with pytest.raises(ValueError, match=r"moe_capacity_factor=0.0; it must be > 0"):
    moe_ep.capacity(16, 2, 8, 0.0)
  with pytest.raises(ValueError, match=r"moe_all_to_all: unknown 'nccl'"):
    tiny_config(moe_all_to_all="nccl")
  h, router, w1, w3, w2 = args
  # 6 experts do not split over expert=4.
  with sharding.use_mesh(sharding.make_mesh("fsdp=2,expert=4")):
    with pytest.raises(ValueError, match=r"num_local_experts=6 is not divisible by the "
                                         r"expert-parallel mesh axes expert = 4"):
      moe_ep.sparse_moe_ep(h, None, router[:, :6], w1[:6], w3[:6], w2[:6], top_k=R,
                           dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"MoE input's batch 4 is not divisible by the mesh "
                                         r"axes data·fsdp·expert = 8"):
      moe_ep.sparse_moe_ep(h[:4], None, router, w1, w3, w2, top_k=R, dtype=jnp.float32)


def test_ragged_exchange_compiles_for_a_tpu_topology():
  """`auto` picks ragged_all_to_all when lowering for TPU (v5p 2x2x1, expert=4, from this CPU
  host with libtpu): forward 2 exchanges (tokens out, results back), gradient 2 more."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1")
  mesh = sharding.make_mesh("expert=4", topo.devices)
  Mt, Ft = 128, 256  # lane-aligned widths for the TPU grouped matmul

  def sds(shape, spec, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))

  args = (sds((B, 16, Mt), PartitionSpec("expert")), sds((Mt, E), PartitionSpec()),
          sds((E, Mt, Ft), PartitionSpec("expert")), sds((E, Mt, Ft), PartitionSpec("expert")),
          sds((E, Ft, Mt), PartitionSpec("expert")))

  def loss(h, router, w1, w3, w2):
    y, _ = moe_ep.sparse_moe_ep(h, None, router, w1, w3, w2, top_k=R, dtype=jnp.bfloat16,
                                exchange="auto")
    return jnp.sum(y.astype(jnp.float32) ** 2)

  with sharding.use_mesh(mesh):
    assert moe_ep.resolve_exchange("auto") == "ragged"  # the lowering target, not the host
    fwd = jax.jit(loss).lower(*args).compile().as_text()
    both = jax.jit(jax.value_and_grad(loss, argnums=(0, 2, 3, 4))).lower(*args).compile()
  ragged = re.compile(r"= \S+ ragged-all-to-all\(")
  assert len(ragged.findall(fwd)) == 2
  assert len(ragged.findall(both.as_text())) == 4


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_padded_exchange_moves_the_analytic_bytes(reference, factor):
  # The padded exchange's cost model (experiments/bench_moe_ep.py): forward and backward each
  # send and return one [E·C, M] buffer per device, C = capacity(local tokens, R, E, factor).
  args = reference[0]

  def loss(*a):
    return _loss(*moe_ep.sparse_moe_ep(a[0], None, *a[1:], top_k=R, dtype=jnp.float32,
                                       exchange="padded", capacity_factor=factor))

  with sharding.use_mesh(sharding.make_mesh("fsdp=2,expert=4")):
    hlo = jax.jit(jax.value_and_grad(loss, argnums=range(5))).lower(*args).compile().as_text()
  cap = moe_ep.capacity(B * T // 8, R, E, factor)
  assert all_to_all_bytes(hlo) == (4, 4 * E * cap * M * 4)
