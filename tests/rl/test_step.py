"""The RL update: sampler/trainer agreement on a real (tiny, random) model; microbatch
invariance, pi_old frozen across the mu updates and CISPO == DAPO at mu = 1 on a bigram
stand-in model (the update only needs `model.apply(...).logits`; compiling the real model's
backward several times would cost minutes on 2 CPU cores)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.rl.config import resolve
from m1jax.rl.rollout import minibatches, sample_rollouts
from m1jax.rl.step import accumulate_grads, rl_update, trainer_logprobs
from m1jax.tasks import make_task
from m1jax.train.data import ByteTokenizer
from m1jax.train.state import TrainState
from m1jax.train.optimizer import make_optimizer
from tests.helpers import random_params, tiny_config

import ml_collections


def _settings(**changes):
  r = common.rl_config()
  r.num_generations, r.prompts_per_step, r.num_minibatches = 4, 2, 2
  r.max_new_tokens, r.seq_len = 10, 18
  for k, v in changes.items():
    r[k] = v
  return resolve(r)


@functools.lru_cache(maxsize=None)
def _setup():
  config = tiny_config((0, 1), vocab_size=260, initializer_range=0.05)
  model = MiniMaxM1ForCausalLM(config)
  params = random_params(config, 0)
  return model, params


@functools.lru_cache(maxsize=None)
def _rollouts(dynamic_sampling=False):
  model, params = _setup()
  s = _settings(dynamic_sampling=dynamic_sampling)
  task = make_task("arithmetic", max_digits=1)
  examples = [task.example(0, i) for i in range(s.prompts_per_step)]
  return sample_rollouts(model, params, ByteTokenizer(), task, examples, s, seed=3)


def test_sampler_and_trainer_logprobs_agree_in_fp32():
  model, params = _setup()
  batch = _rollouts()
  logp = np.asarray(trainer_logprobs(params, jnp.asarray(batch.tokens_BT),
                                     jnp.asarray(batch.token_mask_BT), model=model,
                                     temperature=1.0))
  m = batch.mask_BT > 0
  assert m.sum() >= 8
  np.testing.assert_array_less(np.abs(logp - batch.old_logp_BT)[m], 1e-5)


class _Bigram:
  """logits[b, t] = emb[tokens[b, t]] @ w: a hashable stand-in with the model's call shape."""

  class _Out:
    def __init__(self, logits):
      self.logits = logits

  def apply(self, variables, tokens_BT, token_mask_BT=None):
    del token_mask_BT
    p = variables["params"]
    return self._Out(jnp.take(p["emb"], tokens_BT, axis=0) @ p["w"])

  @staticmethod
  def init(seed=0, vocab=260, width=8):
    rng = np.random.default_rng(seed)
    return {"emb": jnp.asarray(rng.normal(0, 1, (vocab, width)), jnp.float32),
            "w": jnp.asarray(rng.normal(0, 0.5, (width, vocab)), jnp.float32)}


_BIGRAM = _Bigram()


def _mb(batch, s, k=0, model=None, params=None):
  """Minibatch k; with a model, pi_old is that model's own log-probs (r = 1 at the start)."""
  mbs = minibatches(batch, s, np.random.default_rng(0))
  mb = dict(mbs[k])
  mb.pop("rows")
  mb = jax.tree.map(jnp.asarray, mb)
  if model is not None:
    logp = trainer_logprobs(params, mb["tokens_BT"], mb["token_mask_BT"], model=model,
                            temperature=1.0)
    mb["old_logp_BT"] = jnp.where(mb["mask_BT"] > 0, logp, 0.0)
  return mb


@pytest.mark.parametrize("mode", ["token-mean", "group-token-mean", "seq-mean-token-mean"])
def test_microbatches_leave_the_gradient_unchanged(mode):
  model, params = _BIGRAM, _Bigram.init()
  batch = _rollouts()
  grads = []
  for k in (1, 2, 4):
    s = _settings(loss_agg_mode=mode, micro_batches=k, num_minibatches=1)
    mb = _mb(batch, s, model=model, params=params)
    mb["old_logp_BT"] = mb["old_logp_BT"] - 0.3 * mb["mask_BT"]   # r != 1: clipping active
    fn = jax.jit(functools.partial(accumulate_grads, model=model, settings=s))
    grads.append(fn(params, mb, jnp.zeros_like(mb["old_logp_BT"]))[0])
  for g in grads[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 grads[0], g)


def _tx(lr=1e-2):
  opt = ml_collections.ConfigDict(common.optimizer_config().to_dict())
  opt.learning_rate, opt.warmup_steps, opt.schedule = lr, 0, "constant"
  return make_optimizer(opt, 10)[0]


def test_pi_old_is_frozen_for_the_whole_generation_batch():
  model, params = _BIGRAM, _Bigram.init()
  batch = _rollouts()
  s = _settings(num_minibatches=2)
  tx = _tx()
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  ratios = []
  for k in range(2):
    ref = jnp.zeros((s.minibatch_rows, s.seq_len - 1))
    state, m = rl_update(state, _mb(batch, s, k, model, params), ref, model=model, tx=tx,
                         settings=s)
    ratios.append((float(m["is_ratio/min"]), float(m["is_ratio/max"])))
  # The first update sees the sampler's own policy (r = 1); the second, after one update,
  # must see r != 1 (a recomputed pi_old would make it 1 again: plain REINFORCE).
  np.testing.assert_allclose(ratios[0], (1.0, 1.0), atol=1e-4)
  assert ratios[1][1] - ratios[1][0] > 1e-3


def test_at_mu_one_cispo_and_dapo_take_the_same_step():
  model, params = _BIGRAM, _Bigram.init()
  batch = _rollouts()
  tx = _tx()
  out = []
  for algorithm in ("cispo", "dapo"):
    s = _settings(algorithm=algorithm, num_minibatches=1)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    ref = jnp.zeros((s.minibatch_rows, s.seq_len - 1))
    state, _ = rl_update(state, _mb(batch, s, 0, model, params), ref, model=model, tx=tx,
                         settings=s)
    out.append(state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *out)
