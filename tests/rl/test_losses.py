"""The policy-loss registry: gradients, per-name signatures, aggregation, bad settings."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.rl import losses
from m1jax.rl.config import PRESETS, resolve
from m1jax.rl.losses import PolicyLossInputs, get_policy_loss, loss_weights
from configs import common


def _cfg(**changes):
  values = dict(epsilon_low=0.2, epsilon_high=0.28, is_epsilon_high=0.28, is_epsilon_low=None,
                unified_mask=False, dual_clip_c=None)
  values.update(changes)
  return types.SimpleNamespace(**values)


def _inputs(logp, old, adv, mask=None):
  logp, old, adv = (jnp.asarray(x, jnp.float32) for x in (logp, old, adv))
  mask = jnp.ones_like(logp) if mask is None else jnp.asarray(mask, jnp.float32)
  return PolicyLossInputs(logp_BT=logp, old_logp_BT=old, adv_BT=adv, mask_BT=mask)


def _grads(name, x, cfg, mode="token-mean"):
  """d(aggregated loss)/d(logp) and d/d(old_logp)."""
  fn = get_policy_loss(name)
  w = loss_weights(x.mask_BT, mode, jnp.arange(x.mask_BT.shape[0]))

  def total(logp, old):
    return jnp.sum(w * fn(PolicyLossInputs(logp, old, x.adv_BT, x.mask_BT), cfg)[0])
  return jax.grad(total, argnums=(0, 1))(x.logp_BT, x.old_logp_BT)


def test_cispo_gradient_is_minus_capped_weight_times_adv_over_n():
  rng = np.random.default_rng(0)
  old = np.log(rng.uniform(0.01, 0.9, (3, 5)))
  logp = old + rng.normal(0, 0.5, (3, 5))   # ratios on both sides of the cap
  adv = np.repeat(rng.normal(0, 1, (3, 1)), 5, axis=1)
  mask = np.ones((3, 5)); mask[2, 3:] = 0
  x = _inputs(logp, old, adv, mask)
  g_logp, g_old = _grads("cispo", x, _cfg())
  r_hat = np.minimum(np.exp(logp - old), 1.28)
  expected = -r_hat * adv * mask / mask.sum()
  np.testing.assert_allclose(np.asarray(g_logp), expected, rtol=1e-5, atol=1e-7)
  # The weight is stop-gradiented: pi_old carries no gradient at all.
  assert np.all(np.asarray(g_old) == 0)


@pytest.mark.parametrize("name,expected", [
    ("ppo_clip", 0.0),          # r=2 > 1.28 with A>0: the token is dropped
    ("cispo", -(1 + 0.28)),     # kept, weight capped at 1+eps
    ("reinforce", -2.0),        # kept, weight uncapped
])
def test_each_loss_has_its_own_gradient_signature(name, expected):
  adv = 1.5
  x = _inputs([[np.log(0.2)]], [[np.log(0.1)]], [[adv]])   # r = 2
  g_logp, _ = _grads(name, x, _cfg())
  np.testing.assert_allclose(float(g_logp[0, 0]), expected * adv, rtol=1e-6)


def test_ppo_clip_gradient_inside_the_trust_region_is_r_times_adv():
  x = _inputs([[np.log(0.11)]], [[np.log(0.1)]], [[2.0]])   # r = 1.1
  g_logp, _ = _grads("ppo_clip", x, _cfg())
  np.testing.assert_allclose(float(g_logp[0, 0]), -1.1 * 2.0, rtol=1e-5)


def test_cispo_unified_mask_drops_what_ppo_drops():
  x = _inputs([[np.log(0.2), np.log(0.1)]], [[np.log(0.1), np.log(0.2)]], [[1.0, -1.0]])
  g_mask, _ = _grads("cispo", x, _cfg(unified_mask=True))
  g_ppo, _ = _grads("ppo_clip", x, _cfg())
  np.testing.assert_allclose(np.asarray(g_mask), np.asarray(g_ppo), atol=1e-7)
  g_plain, _ = _grads("cispo", x, _cfg())
  assert np.all(np.asarray(g_plain) != 0)


def test_cispo_optional_lower_bound():
  x = _inputs([[np.log(0.01)]], [[np.log(0.1)]], [[1.0]])   # r = 0.1
  g, _ = _grads("cispo", x, _cfg(is_epsilon_low=0.5))
  np.testing.assert_allclose(float(g[0, 0]), -0.5, rtol=1e-5)


def test_dual_clip_caps_negative_advantage_loss():
  x = _inputs([[np.log(0.9)]], [[np.log(0.01)]], [[-1.0]])   # r = 90 > c = 10
  loss, sums = get_policy_loss("ppo_clip")(x, _cfg(dual_clip_c=10.0))
  np.testing.assert_allclose(float(loss[0, 0]), 10.0, rtol=1e-6)
  assert float(sums["clip_ratio/dual_mean"]) == 1.0


def test_at_ratio_one_cispo_and_dapo_gradients_are_equal():
  rng = np.random.default_rng(1)
  logp = np.log(rng.uniform(0.01, 0.99, (4, 6)))
  adv = np.repeat(rng.normal(0, 1, (4, 1)), 6, axis=1)
  x = _inputs(logp, logp, adv)
  g_cispo, _ = _grads("cispo", x, _cfg())
  g_dapo, _ = _grads("ppo_clip", x, _cfg(dual_clip_c=10.0))
  np.testing.assert_allclose(np.asarray(g_cispo), np.asarray(g_dapo), rtol=1e-6, atol=1e-9)


def test_gspo_sequence_ratio():
  # Two tokens with log ratios +0.1 and -0.1: s = 1, so the gradient is -A/N on each.
  x = _inputs([[np.log(0.5) + 0.1, np.log(0.5) - 0.1]], [[np.log(0.5)] * 2], [[1.0, 1.0]])
  g, _ = _grads("gspo", x, _cfg(epsilon_low=3e-4, epsilon_high=4e-4))
  np.testing.assert_allclose(np.asarray(g), [[-0.5, -0.5]], rtol=1e-5)


def test_metrics_are_masked_sums():
  x = _inputs([[np.log(0.2), np.log(0.2), np.log(0.1)]],
              [[np.log(0.12), np.log(0.12), np.log(0.05)]], [[1.0, 1.0, 1.0]],
              mask=[[1.0, 0.0, 1.0]])
  _, sums = get_policy_loss("cispo")(x, _cfg())
  assert float(sums["tokens"]) == 2.0 and float(sums["cispo/clip_frac"]) == 2.0
  # Only the token sampled at pi_old = 0.05 < 0.1 is in the low-probability bucket.
  assert float(sums["tokens@lowp"]) == 1.0 and float(sums["cispo/clip_frac@lowp"]) == 1.0


def test_aggregation_modes():
  mask = jnp.asarray([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], jnp.float32)
  group = jnp.asarray([0, 0, 1, -1])
  w = loss_weights(mask, "token-mean")
  np.testing.assert_allclose(np.asarray(w), np.asarray(mask) / 6)
  w = np.asarray(loss_weights(mask, "seq-mean-token-mean"))
  np.testing.assert_allclose(w[0, 0], 1 / (3 * 3)); np.testing.assert_allclose(w[1, 0], 1 / 3)
  w = np.asarray(loss_weights(mask, "group-token-mean", group))
  # Group 0 has 4 tokens, group 1 has 2; two groups share the mean.
  np.testing.assert_allclose(w[0, 0], 1 / (2 * 4)); np.testing.assert_allclose(w[2, 0], 1 / 4)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="loss_agg_mode"):
    loss_weights(mask, "sum")


def _rl(**changes):
  r = common.rl_config()
  for k, v in changes.items():
    r[k] = v
  return r


def test_presets_fill_and_explicit_keys_win():
  for name, preset in PRESETS.items():
    s = resolve(_rl(algorithm=name))
    assert s.policy_loss == preset["policy_loss"]
    assert s.loss_agg_mode == preset["loss_agg_mode"]
  assert resolve(_rl(algorithm="dapo", epsilon_high=0.3)).epsilon_high == 0.3
  assert resolve(_rl(algorithm="grpo")).dynamic_sampling is False


@pytest.mark.parametrize("changes,match", [
    (dict(algorithm="ppo"), "unknown preset"),
    (dict(policy_loss="cispo2"), "unknown policy loss"),
    (dict(is_epsilon_high=0.0), "is_epsilon_high"),
    (dict(is_epsilon_high=-1.0), "is_epsilon_high"),
    (dict(top_p=0.9), "truncated sampling"),
    (dict(top_k=20), "truncated sampling"),
    (dict(num_generations=1), "G >= 2"),
    (dict(truncated_policy="drop"), "truncated_policy"),
    (dict(num_minibatches=3), "equal minibatches"),
])
def test_bad_settings_are_clear_errors(changes, match):
  with pytest.raises(ValueError, match=match):
    resolve(_rl(**changes))


def test_truncated_sampling_allowed_explicitly():
  assert resolve(_rl(top_p=0.9, allow_truncated_sampling=True)).top_p == 0.9


def test_registry_lists_names():
  assert {"cispo", "ppo_clip", "reinforce", "gspo"} <= set(losses.policy_loss_names())
