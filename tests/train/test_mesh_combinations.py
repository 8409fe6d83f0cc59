"""Any product of data x fsdp x expert x tensor x sequence trains like one device: a tiny
lightning + softmax model with an 8-expert MoE, on packed rows whose documents start on and
next to shard edges, has the loss and every parameter gradient of one device (fp32, rel
<= 1e-5) on each mesh of issue 11. The expert-parallel MoE runs its padded all-to-all with a
capacity factor that covers the worst case (exact), and each mesh must actually trace the
parallel paths its axes ask for (expert: the EP exchange; sequence: LASP-2 and the K/V
all-gather)."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import MiniMaxM1ForCausalLM, sharding
from m1jax.layers import lightning_attention as lightning_layer
from m1jax.layers import moe_ep
from m1jax.layers import params as lp
from m1jax.ops import attention_impl
from configs.common import optimizer_config
from m1jax.train.loop import global_batch
from m1jax.train.optimizer import make_optimizer
from m1jax.train.state import state_shardings, train_state_from_params
from m1jax.train.step import make_train_step, microbatches
from tests.helpers import random_params, tiny_config
from tests.train.test_sequence_parallel import _boxed, _packed_batch, _spy
from tests.train.test_sharded_train import MICRO, _loss_and_grads

# 8 experts so `expert=8` holds one per device; capacity factor E/top_k = 4 makes the padded
# exchange's per-(device, expert) capacity the local token count: nothing can be dropped.
CONFIG = tiny_config((0, 1), **dict(MICRO, num_local_experts=8), moe_all_to_all="padded",
                     moe_capacity_factor=4.0)
MESHES = ["expert=8", "fsdp=2,expert=4", "fsdp=4,sequence=2", "tensor=2,sequence=4",
          "data=2,expert=2,tensor=2", "fsdp=2,expert=2,sequence=2"]


@pytest.fixture(scope="module")
def one_device():
  model = MiniMaxM1ForCausalLM(CONFIG)
  params = random_params(model.config, seed=0)
  one = sharding.make_mesh("fsdp=1", jax.devices()[:1])
  return model, params, _loss_and_grads(model, params, global_batch(_packed_batch(), one), one)


def _expected_paths(spec: str) -> list[str]:
  axes = dict(part.split("=") for part in spec.split(","))
  paths = []
  if int(axes.get("sequence", 1)) > 1:
    paths += ["attend_sp", "lightning_attention_sp"]
  if int(axes.get("expert", 1)) > 1:
    paths.append("sparse_moe_ep")
  return sorted(paths)


@pytest.mark.slow
@pytest.mark.parametrize("spec", MESHES)
def test_loss_and_grads_equal_one_device(one_device, spec, monkeypatch):
  model, params, (ref_loss, ref_grads) = one_device
  calls = []
  _spy(monkeypatch, lightning_layer, "lightning_attention_sp", calls)
  _spy(monkeypatch, attention_impl, "attend_sp", calls)
  _spy(monkeypatch, moe_ep, "sparse_moe_ep", calls)
  mesh = sharding.make_mesh(spec)
  placed = jax.device_put(params, sharding.logical_shardings(
      params, sharding.logical_param_axes(_boxed(model)), mesh))
  loss, grads = _loss_and_grads(model, placed, global_batch(_packed_batch(), mesh), mesh)
  assert sorted(set(calls)) == _expected_paths(spec), calls
  assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree.leaves(ref_grads)):
    err = np.linalg.norm(np.asarray(g) - np.asarray(r)) / max(np.linalg.norm(r), 1e-30)
    assert err <= 1e-5, (spec, jax.tree_util.keystr(path), err)



def test_trainer_counts_the_assignments_a_small_capacity_drops(one_device):
  # Capacity factor 1 on expert=4,tensor=2 (two microbatches, so the count accumulates):
  # each (device, expert) pair takes a quarter of a device's assignments, so an uneven
  # routing drops some. The train step's moe/dropped must be the model's per-layer
  # RouterStats.dropped summed over layers and microbatches (those counts are checked against an
  # independent walk in tests/layers/test_moe_ep.py), and its fraction over tokens·top_k·L.
  _, params, _ = one_device
  model = MiniMaxM1ForCausalLM(dataclasses.replace(CONFIG, moe_capacity_factor=1.0))
  mesh = sharding.make_mesh("expert=4,tensor=2")
  tx, _ = make_optimizer(optimizer_config(), 10)
  shardings = state_shardings(model, tx, mesh)
  state = train_state_from_params(params, tx, mesh, shardings)
  batch = global_batch(_packed_batch(), mesh)

  def dropped(p, mb):  # one microbatch, split over the devices as the train step splits it
    mb = {k: lp.constrain(v, (lp.BATCH, lp.LENGTH)) for k, v in mb.items()}
    return jnp.sum(model.apply({"params": p}, mb["tokens"], mb["positions"],
                               segment_ids_BT=mb["segment_ids"]).router_stats.dropped)

  with sharding.use_mesh(mesh):
    per_micro = jax.jit(lambda p, b: jax.lax.map(lambda mb: dropped(p, mb),
                                                 microbatches(b, 2)))(state.params, batch)
  expected = int(np.sum(np.asarray(per_micro)))
  step = make_train_step(model, tx, mesh, shardings, accum_steps=2, aux_coef=0.01)
  _, metrics = step(state, batch)
  assignments = int(metrics["tokens"]) * CONFIG.num_experts_per_tok * CONFIG.num_hidden_layers
  assert expected > 0 and int(metrics["moe/dropped"]) == expected
  np.testing.assert_allclose(float(metrics["moe/drop_fraction"]), expected / assignments)
