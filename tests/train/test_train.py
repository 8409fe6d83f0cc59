"""The training run: overfitting, exact resume, NaN guard, bad input, flag overrides."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from m1jax import MiniMaxM1ForCausalLM, ModelConfig, config_overrides
from m1jax.sharding import make_mesh
from m1jax.train import train_and_evaluate
from m1jax.train.checkpointing import Checkpointer
from m1jax.train.data import ByteTokenizer, packed_dataset
from m1jax.train.optimizer import make_optimizer
from m1jax.train.state import abstract_train_state, init_train_state, state_shardings
from m1jax.train.step import make_train_step
from tests.helpers import micro_train_config as micro_config


def _final_state(config, workdir):
  """The newest checkpoint's train state (on one device) and its data iterator state."""
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  abstract = abstract_train_state(model, tx, make_mesh("fsdp=1", jax.devices()[:1]))
  ckpt = Checkpointer(workdir, 3)
  step = ckpt.latest_step()
  state = ckpt.restore(step, abstract)
  ckpt.close()
  data_state = (pathlib.Path(workdir) / "checkpoints" / str(step) / "data" /
                "process_0-of-1.json").read_text()
  return state, data_state


@pytest.mark.slow
def test_overfits_one_batch():
  config = micro_config()
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
  t = config.train
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  tx, _ = make_optimizer(config.optimizer, 100)
  batch = next(iter(packed_dataset(config.data, ByteTokenizer(), seq_len=t.seq_len,
                                   batch_size=t.batch_size, seed=0, split=0)))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  mesh = make_mesh("fsdp=1", jax.devices()[:1])
  shardings = state_shardings(model, tx, mesh)
  state = init_train_state(model, tx, jax.random.key(0), mesh, shardings)
  train_step = make_train_step(model, tx, mesh, shardings, accum_steps=2, aux_coef=0.001)
  losses = []
  for _ in range(50):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["ce_loss"]))
  assert losses[-1] < losses[0] / 6, losses[::10]


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
  # Constant LR: num_steps then only decides where a run stops, not the schedule.
  def config(num_steps):
    c = micro_config(num_steps=num_steps, checkpoint_every=3)
    c.optimizer.schedule = "constant"
    return c

  train_and_evaluate(config(6), str(tmp_path / "straight"))
  first = train_and_evaluate(config(3), str(tmp_path / "resumed"))
  assert first["step"] == 3
  second = train_and_evaluate(config(6), str(tmp_path / "resumed"))
  assert second["start_step"] == 3 and second["step"] == 6
  a, data_a = _final_state(config(6), str(tmp_path / "straight"))
  b, data_b = _final_state(config(6), str(tmp_path / "resumed"))
  assert int(a.step) == int(b.step) == 6 and data_a == data_b
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert (tmp_path / "straight" / "metrics.jsonl").exists()
  # The same workdir under an incompatible model is refused before anything is touched.
  bad = config(8)
  bad.model.hidden_size = 48
  with pytest.raises(ValueError, match=r"incompatible config \(model.hidden_size: "
                                       r"checkpoint 32, config 48"):
    train_and_evaluate(bad, str(tmp_path / "resumed"))


@pytest.mark.slow
def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = micro_config(num_steps=8, checkpoint_every=1)
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e36, 0
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.schedule = "constant"
  with pytest.raises(FloatingPointError, match="non-finite training") as err:
    train_and_evaluate(config, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path), 3)
  last = ckpt.latest_step()
  ckpt.close()
  assert last is not None and f"checkpoint is step {last}" in str(err.value)
  state, _ = _final_state(config, str(tmp_path))
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))




def test_bad_train_settings():
  with pytest.raises(ValueError, match="not divisible by train.grad_accum_steps"):
    train_and_evaluate(micro_config(grad_accum_steps=3), "/nonexistent/never-created")


def _parse(argv):
  """experiments/train.py's flag parsing, on a private FlagValues."""
  argv = ["train"] + argv
  values = flags.FlagValues()
  holder = config_overrides.define_config_file("config", "configs/tiny.py", "",
                                               flag_values=values, sys_argv=argv)
  config_overrides.parse_flags(argv, flag_values=values)
  return holder.value


def test_flag_overrides_change_the_config(capsys):
  config = _parse(["--config=configs/tiny.py", "--config.train.num_steps=7",
                   "--config.optimizer.learning_rate=0.5", "--config.data.task=sort"])
  assert (config.train.num_steps, config.optimizer.learning_rate, config.data.task) == (
      7, 0.5, "sort")
  assert _parse(["--config.optimizer.b2=0.9"]).optimizer.b2 == 0.9
  with pytest.raises(SystemExit):
    _parse(["--config=configs/tiny.py", "--config.train.no_such_key=1"])
  err = capsys.readouterr().err
  assert "unknown config key 'train.no_such_key'" in err and "num_steps" in err


@pytest.mark.parametrize("spec", ["tiny.py", "small.py", "minimax_m1_456b.py",
                                  "small.py:layers=8", "minimax_m1_456b.py:runlocal"])
def test_every_config_builds(spec):
  config = _parse([f"--config=configs/{spec}"])
  model_config = ModelConfig.from_dict(config.model.to_dict())
  make_optimizer(config.optimizer, config.train.num_steps)
  assert config.train.batch_size % config.train.grad_accum_steps == 0
  jax.eval_shape(lambda: MiniMaxM1ForCausalLM(model_config).init(
      jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))


def test_eval_reports_loss_and_accuracy(tmp_path):
  config = micro_config(num_steps=2, eval_every=2)
  config.train.eval_batches, config.train.eval_examples = 1, 4
  config.train.tensorboard, config.train.plot = True, True
  summary = train_and_evaluate(config, str(tmp_path))
  last = summary["last_eval"]
  assert last["step"] == 2 and np.isfinite(last["loss"]) and 0 <= last["accuracy"] <= 1
  assert (tmp_path / "curves.png").stat().st_size > 0
  assert list((tmp_path / "tensorboard").iterdir())
