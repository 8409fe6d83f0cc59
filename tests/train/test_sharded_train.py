"""The trainer on meshes of 8 fake CPU devices: sharded loss and grads equal one device's,
`config.mesh` trains with one device's losses, Orbax restores across meshes bit-exactly and
reads params alone, and bad meshes or checkpoints fail naming the mesh and the dimension."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from configs.common import optimizer_config
from m1jax import MiniMaxM1ForCausalLM, ModelConfig, sharding
from m1jax.train import train_and_evaluate
from m1jax.train.checkpointing import Checkpointer, restore_trained_params
from m1jax.train.data import make_tokenizer, packed_dataset
from m1jax.train.loop import global_batch
from m1jax.train.optimizer import make_optimizer
from m1jax.train.state import abstract_train_state, init_train_state, state_shardings
from m1jax.train.step import _forward, make_train_step
from tests.helpers import tiny_config

# Every dim divides every mesh below: heads 8 and kv heads 4 over tensor<=4, width 32 over
# fsdp<=8, expert width 48 over tensor, vocab 128.
MICRO = dict(vocab_size=128, num_attention_heads=8, num_key_value_heads=4, hidden_size=32,
             head_dim=8, intermediate_size=48, num_local_experts=4)
MESHES = ["fsdp=8", "data=2,fsdp=4", "fsdp=4,tensor=2", "data=2,tensor=4"]
# mesh_run trains 3 steps; the resumed run goes on to this step.
RESUMED_STEPS = 5


def _batch(seed=0, rows=8, length=16):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, MICRO["vocab_size"], (rows, length)).astype(np.int32)
  return {"tokens": ids, "positions": np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
          "segment_ids": np.ones_like(ids), "loss_mask": np.ones_like(ids)}


def _loss_and_grads(model, params, batch, mesh):
  def loss(p):
    ce_sum, count, aux = _forward(model, p, batch)
    return ce_sum / count + 0.01 * aux
  with sharding.use_mesh(mesh):
    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def micro():
  model = MiniMaxM1ForCausalLM(tiny_config((0, 1), **MICRO))
  tx, _ = make_optimizer(optimizer_config(), 10)
  one = sharding.make_mesh("fsdp=1", jax.devices()[:1])
  params = init_train_state(model, tx, jax.random.key(0), one).params
  batch = {k: jnp.asarray(v) for k, v in _batch().items()}
  return model, tx, params, _loss_and_grads(model, params, batch, one)


@pytest.mark.parametrize("spec", MESHES)
def test_sharded_loss_and_grads_equal_one_device(micro, spec):
  model, tx, params, (ref_loss, ref_grads) = micro
  mesh = sharding.make_mesh(spec)
  placed = jax.device_put(params, state_shardings(model, tx, mesh).params)
  loss, grads = _loss_and_grads(model, placed, global_batch(_batch(), mesh), mesh)
  assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree.leaves(ref_grads)):
    err = np.linalg.norm(np.asarray(g) - np.asarray(r)) / max(np.linalg.norm(r), 1e-30)
    assert err <= 1e-5, (spec, jax.tree_util.keystr(path), err)


def _runlocal(mesh, **train):
  # One group of the released 7 lightning + 1 softmax layers, at runlocal widths.
  config = tiny.get_config("layers=8,runlocal")
  config.mesh = mesh
  # runlocal's 4 experts -> the full tiny model's 8, so expert=8 holds one per device.
  config.model.num_local_experts = 8
  # A constant LR (after warmup) does not depend on num_steps, so a run resumed with more
  # steps continues the same schedule as one device's uninterrupted run.
  config.optimizer.schedule = "constant"
  t = config.train
  t.log_every, t.eval_batches, t.eval_examples, t.eval_at_start = 1, 0, 0, False
  t.tensorboard = t.plot = False
  t.num_steps, t.checkpoint_every = 3, 3
  for key, value in train.items():
    t[key] = value
  return config


def _losses(workdir):
  lines = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]
  return [l["train/loss"] for l in lines if "train/loss" in l]


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
  """configs/tiny.py:runlocal trained 3 steps by the trainer on fsdp=4,tensor=2."""
  workdir = str(tmp_path_factory.mktemp("mesh_run"))
  config = _runlocal("fsdp=4,tensor=2")
  train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture(scope="module")
def one_device_run(mesh_run):
  """(losses, initial and final params as numpy) of mesh_run's config on one device, for
  RESUMED_STEPS steps uninterrupted (the first three are mesh_run's; the rest are what a
  resumed run must continue with)."""
  config, _ = mesh_run
  t = config.train
  model_config = ModelConfig.from_dict(config.model.to_dict())
  model = MiniMaxM1ForCausalLM(model_config)
  tx, _ = make_optimizer(config.optimizer, RESUMED_STEPS)
  one = sharding.make_mesh("fsdp=1", jax.devices()[:1])
  shardings = state_shardings(model, tx, one)
  state = init_train_state(model, tx, jax.random.key(t.seed), one, shardings)
  init = jax.tree.map(np.array, state.params)  # a copy: the step donates the state
  step = make_train_step(model, tx, one, shardings, accum_steps=t.grad_accum_steps,
                         aux_coef=model_config.router_aux_loss_coef)
  data = iter(packed_dataset(config.data, make_tokenizer(config.data, model_config.vocab_size),
                             seq_len=t.seq_len, batch_size=t.batch_size, seed=t.seed, split=0))
  losses = []
  for _ in range(RESUMED_STEPS):
    state, metrics = step(state, global_batch(next(data), one))
    losses.append(float(metrics["loss"]))
    assert int(metrics["moe/dropped"]) == 0  # one device: nothing is exchanged
  return losses, init, jax.tree.map(np.array, state.params)


def test_config_mesh_trains_with_the_losses_of_one_device(mesh_run, one_device_run):
  config, workdir = mesh_run
  np.testing.assert_allclose(_losses(workdir), one_device_run[0][:config.train.num_steps],
                             rtol=1e-5)


def test_a_run_resumed_on_another_mesh_continues_exactly(mesh_run, one_device_run, tmp_path):
  # mesh_run stopped at step 3 on fsdp=4,tensor=2. The trainer resumes its checkpoint for
  # step 4 on an expert- and sequence-parallel mesh (EP exchange + LASP-2), then that one
  # for step 5 on expert=8 (one expert per device): the trainer runs end to end on both, and
  # the resumed run equals one device's uninterrupted one. The padded exchange gets a
  # capacity factor covering the worst case (an execution field the checkpoint may differ in).
  losses, init, params = one_device_run
  _, workdir = mesh_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  for mesh, steps in (("fsdp=2,expert=2,sequence=2", 4), ("expert=8", RESUMED_STEPS)):
    config = _runlocal(mesh, num_steps=steps)
    config.model.moe_all_to_all = "padded"
    config.model.moe_capacity_factor = (config.model.num_local_experts
                                        / config.model.num_experts_per_tok)
    assert train_and_evaluate(config, resumed)["step"] == steps
  # Losses: fp32 with the reduction order of each mesh; the one-device run and mesh_run
  # already agree to 1e-5 (test above), and restoring is bit-exact (test below).
  np.testing.assert_allclose(_losses(resumed), losses, rtol=1e-5)
  lines = [json.loads(l) for l in open(f"{resumed}/metrics.jsonl")]
  dropped = [l["train/moe/dropped"] for l in lines if "train/moe/dropped" in l]
  # Logged every step (log_every=1); the exact capacity drops nothing.
  assert dropped == [0] * RESUMED_STEPS
  # Params after step 5, against one device's, per leaf relative to the size of its 5
  # updates (relative to the params themselves the test would be blind: the updates are
  # ~lr and the init is O(1)); not elementwise: Adam divides by sqrt(v), so a gradient entry
  # near 0 whose last bits differ between meshes can move its param by up to lr per step.
  _, _, restored = restore_trained_params(resumed)
  for (path, a), b, b0 in zip(jax.tree_util.tree_leaves_with_path(restored),
                              jax.tree.leaves(params), jax.tree.leaves(init)):
    err = np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b - b0), 1e-30)
    # Measured <= 1.5e-6 (layernorm scales; 2e-7..5e-7 elsewhere) at fp32.
    assert err <= 1e-5, (jax.tree_util.keystr(path), err)


def test_checkpoint_restores_bit_exactly_onto_another_mesh_and_one_device(mesh_run):
  config, workdir = mesh_run
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  ckpt = Checkpointer(workdir, 3)
  other = sharding.make_mesh("expert=2,fsdp=4")
  on_other = ckpt.restore(3, abstract_train_state(model, tx, other))
  on_one = ckpt.restore(3, abstract_train_state(
      model, tx, sharding.make_mesh("fsdp=1", jax.devices()[:1])))
  ckpt.close()
  w1 = on_other.params["model"]["layers"]["layer_0"]["block_sparse_moe"]["w1"]
  assert w1.sharding.mesh.shape == other.shape and w1.sharding.spec[0] == "expert"
  assert int(on_other.step) == int(on_one.step) == 3
  for a, b in zip(jax.tree.leaves(on_other), jax.tree.leaves(on_one)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # restore_trained_params: the same params, on one device, or sharded onto a mesh.
  _, _, params = restore_trained_params(workdir)
  _, _, sharded = restore_trained_params(workdir, mesh=other)
  for a, b, c in zip(jax.tree.leaves(params), jax.tree.leaves(on_one.params),
                     jax.tree.leaves(sharded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(c), np.asarray(b))
  assert len(jax.tree.leaves(params)[0].devices()) == 1


def test_restore_trained_params_never_reads_the_optimizer_state(tmp_path):
  config = _runlocal("fsdp=8")
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  tx, _ = make_optimizer(config.optimizer, 3)
  state = init_train_state(model, tx, jax.random.key(0), sharding.make_mesh("fsdp=8"))
  # An optimizer state no optimizer of this config could restore into.
  odd = state.replace(opt_state={"not_adam": jnp.arange(3.0)})
  data = iter(packed_dataset(config.data, make_tokenizer(config.data, 512), seq_len=8,
                             batch_size=8, seed=0, split=0))
  ckpt = Checkpointer(str(tmp_path), 3, async_save=False)
  ckpt.save(1, odd, data, config.to_dict())
  ckpt.close()
  _, _, params = restore_trained_params(str(tmp_path))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_meshes_and_checkpoints_name_the_mesh_and_the_dimension(mesh_run, tmp_path):
  config, workdir = mesh_run
  # 4 heads do not split 8 ways: refused before the checkpoint is read.
  with pytest.raises(ValueError, match=r"mesh data=1,fsdp=1,expert=1,tensor=8,sequence=1: "
                                       r"train state .* \('heads'\) of size 4 is not "
                                       r"divisible by mesh axes tensor = 8"):
    train_and_evaluate(_runlocal("tensor=8", num_steps=4), workdir)
  with pytest.raises(ValueError, match=r"mesh data=1,fsdp=8,expert=1,tensor=1,sequence=1: a "
                                       r"microbatch .* dimension 0 \('batch'\) of size 4 is "
                                       r"not divisible by mesh axes data·fsdp·expert = 8"):
    train_and_evaluate(_runlocal("fsdp=8", grad_accum_steps=2), str(tmp_path / "never"))
  with pytest.raises(ValueError, match=r"unknown axis 'fsdq'"):
    train_and_evaluate(_runlocal("fsdq=8"), str(tmp_path / "never"))
  # A checkpoint whose arrays the target cannot hold (a wider model) names the leaf.
  model_config = ModelConfig.from_dict(config.model.to_dict()).replace(hidden_size=64)
  model = MiniMaxM1ForCausalLM(model_config)
  tx, _ = make_optimizer(config.optimizer, 3)
  ckpt = Checkpointer(workdir, 3)
  with pytest.raises(ValueError, match=r"params/embed_tokens was saved with shape \(512, 32\), "
                                       r"but mesh data=1,fsdp=8,.* expects \(512, 64\)"):
    ckpt.restore(3, abstract_train_state(model, tx, sharding.make_mesh("fsdp=8")))
  ckpt.close()
