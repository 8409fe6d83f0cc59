"""Optimizer: schedules, and weight decay on everything but norm scales."""
import jax
import numpy as np
import pytest

from m1jax.train.optimizer import decay_mask, learning_rate_schedule, make_optimizer
from tests.helpers import micro_train_config


def test_warmup_then_cosine_and_constant():
  opt = micro_train_config().optimizer
  opt.learning_rate, opt.warmup_steps, opt.final_lr_fraction = 1.0, 10, 0.1
  lr = learning_rate_schedule(opt, 110)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(60), lr(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)
  opt.schedule = "constant"
  lr = learning_rate_schedule(opt, 110)
  np.testing.assert_allclose([lr(5), lr(10), lr(100)], [0.5, 1.0, 1.0], atol=1e-6)
  opt.schedule = "linear"
  with pytest.raises(ValueError, match="schedule"):
    learning_rate_schedule(opt, 110)


def test_no_weight_decay_on_norms():
  params = {"model": {"groups": {"layer_0": {
      "input_layernorm": {"scale": np.ones((2, 4), np.float32)},
      "self_attn": {"norm": {"scale": np.ones((2, 4, 4), np.float32)},
                    "out_proj": np.ones((2, 4, 4), np.float32)}}}},
            "norm": {"scale": np.ones(4, np.float32)}, "lm_head": np.ones((4, 8), np.float32)}
  mask = decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert [k for k, v in flat.items() if v] == [
      "['lm_head']", "['model']['groups']['layer_0']['self_attn']['out_proj']"]
  # With zero gradients AdamW only decays: norms must not move, other weights must.
  opt = micro_train_config().optimizer
  opt.learning_rate, opt.warmup_steps, opt.weight_decay = 0.1, 0, 0.5
  tx, _ = make_optimizer(opt, 10)
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(updates["norm"]["scale"] == 0)
  assert np.all(updates["lm_head"] < 0)
