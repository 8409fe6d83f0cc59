"""Advantage conventions, dynamic sampling bookkeeping, rewards."""
import numpy as np
import pytest

from m1jax.rl.advantages import dynamic_sampling_keep, group_advantages
from m1jax.rl.rewards import check_gradable, soft_overlong_penalty, task_rewards
from m1jax.rl.rollout import RolloutBatch, minibatches
from m1jax.tasks import make_task


def test_group_advantages_use_bessel_std():
  r = np.asarray([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
  a = group_advantages(r, eps=0.0)
  expected = (r - r.mean()) / r.std(ddof=1)
  np.testing.assert_allclose(a, expected, rtol=1e-6)
  # ddof=0 would be larger by sqrt(G/(G-1)).
  np.testing.assert_allclose(group_advantages(r, ddof=0, eps=0.0) / a, np.sqrt(8 / 7),
                             rtol=1e-6)


def test_all_equal_group_gives_exact_zero():
  r = np.asarray([[1.0] * 4, [0.0] * 4, [0.0, 1.0, 0.0, 0.0]])
  a = group_advantages(r)
  assert np.all(a[:2] == 0.0)
  assert a[2, 1] > 0 and np.all(a[2, [0, 2, 3]] < 0)
  np.testing.assert_allclose(a[2].sum(), 0.0, atol=1e-6)


def test_dr_grpo_no_std():
  np.testing.assert_allclose(group_advantages([[1.0, 0.0]], std_normalize=False),
                             [[0.5, -0.5]])


def test_group_of_one_is_an_error():
  with pytest.raises(ValueError, match="G >= 2"):
    group_advantages([[1.0], [0.0]])


def _batch(rewards_PG, mask_rows=None):
  P, G = np.shape(rewards_PG)
  N, T = P * G, 6
  rewards = np.asarray(rewards_PG, np.float32).reshape(N)
  keep = np.repeat(dynamic_sampling_keep(np.asarray(rewards_PG)), G)
  mask = np.ones((N, T - 1), np.float32)
  return RolloutBatch(tokens_BT=np.arange(N * T).reshape(N, T).astype(np.int32),
                      token_mask_BT=np.ones((N, T), bool), mask_BT=mask,
                      old_logp_BT=np.zeros((N, T - 1), np.float32), rewards_N=rewards,
                      adv_N=group_advantages(np.asarray(rewards_PG)).reshape(N),
                      group_N=np.repeat(np.arange(P), G).astype(np.int32), kept_N=keep,
                      lengths_N=np.full(N, 3), finish_N=np.zeros(N, np.int32),
                      texts=[""] * N, groups_kept=int(keep.sum() // G))


def test_dynamic_sampling_keeps_whole_mixed_groups():
  rewards = [[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]
  keep = dynamic_sampling_keep(rewards)
  np.testing.assert_array_equal(keep, [False, True, False, True])
  batch = _batch(rewards)
  assert batch.groups_kept == 2
  s = type("S", (), dict(num_minibatches=4, minibatch_rows=4))
  mbs = minibatches(batch, s, np.random.default_rng(0))
  assert len(mbs) == 4
  rows = np.concatenate([mb["rows"][mb["mask_BT"][:, 0] > 0] for mb in mbs])
  # Every kept row exactly once, no dropped row, padding rows masked and in group -1.
  np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(batch.kept_N))
  for mb in mbs:
    assert mb["tokens_BT"].shape == (4, 6)
    pad = mb["mask_BT"][:, 0] == 0
    assert np.all(mb["group_B"][pad] == -1) and np.all(mb["group_B"][~pad] >= 0)


def test_fewer_kept_rows_than_minibatches_means_fewer_updates():
  batch = _batch([[0, 1], [1, 1]])
  s = type("S", (), dict(num_minibatches=4, minibatch_rows=1))
  assert len(minibatches(batch, s, np.random.default_rng(0))) == 2
  batch = _batch([[0, 0], [1, 1]])
  assert minibatches(batch, s, np.random.default_rng(0)) == []


def test_task_rewards_and_overlong_penalty():
  task = make_task("arithmetic", max_digits=2)
  ex = task.example(0, 0)
  np.testing.assert_array_equal(task_rewards(task, [ex, ex], [ex.completion, "1+1=2>=3"]),
                                [1.0, 0.0])
  # DAPO Eq. 13 (TRL's doctest: L_max 100, L_cache 20, |y| = 90 -> -0.5).
  np.testing.assert_allclose(soft_overlong_penalty([80, 90, 100, 120], 100, 20),
                             [0.0, -0.5, -1.0, -1.0])
  assert np.all(soft_overlong_penalty([99], 100, 0) == 0)


def test_task_without_grader_is_rejected():
  with pytest.raises(ValueError, match="grader"):
    check_gradable(object())
