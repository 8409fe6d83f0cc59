"""The RL update: sampler/trainer agreement on a real (tiny, random) model, the chunked head
equal to the full logits, the step on a mesh equal to one device; microbatch
invariance, pi_old frozen across the mu updates and CISPO == DAPO at mu = 1 on a bigram
stand-in model (the update only needs `model.apply(...).logits`; compiling the real model's
backward several times would cost minutes on 2 CPU cores)."""
import functools
import types

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.rl.config import resolve
from m1jax.rl.rollout import minibatches, sample_rollouts
from m1jax import sharding
from m1jax.rl.step import (accumulate_grads, make_rl_step, rl_update, token_logprobs,
                           trainer_logprobs)
from m1jax.tasks import make_task
from m1jax.train.data import ByteTokenizer
from m1jax.train.state import TrainState, state_shardings, train_state_from_params
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
  """logits[b, t] = emb[tokens[b, t]] @ lm_head: a hashable stand-in with the model's call
  shape (hidden states for the chunked head, logits for the full-logits path)."""
  config = types.SimpleNamespace(lm_head_fp32=True, dtype="float32")

  class _Out:
    def __init__(self, logits=None, hidden=None):
      self.logits, self.hidden = logits, hidden

  def apply(self, variables, tokens_BT, token_mask_BT=None, return_hidden=False):
    del token_mask_BT
    p = variables["params"]
    hidden = jnp.take(p["emb"], tokens_BT, axis=0)
    return self._Out(hidden=hidden) if return_hidden else self._Out(hidden @ p["lm_head"])

  @staticmethod
  def init(seed=0, vocab=260, width=8):
    rng = np.random.default_rng(seed)
    return {"emb": jnp.asarray(rng.normal(0, 1, (vocab, width)), jnp.float32),
            "lm_head": jnp.asarray(rng.normal(0, 0.5, (width, vocab)), jnp.float32)}


_BIGRAM = _Bigram()


def _mb(batch, s, k=0, model=None, params=None):
  """Minibatch k; with a model, pi_old is that model's own log-probs (r = 1 at the start)."""
  mbs = minibatches(batch, s, np.random.default_rng(0))
  mb = dict(mbs[k])
  mb.pop("rows")
  # The random policy solves nothing, so its rewards (and advantages) are all 0: set mixed,
  # nonzero advantages, or every gradient below would be 0 and the comparisons vacuous.
  mb["adv_B"] = np.linspace(-1.0, 1.3, len(mb["adv_B"])).astype(np.float32)
  mb["ref_logp_BT"] = np.zeros_like(mb["old_logp_BT"])
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
    grads.append(fn(params, mb)[0])
  assert float(optax.tree.norm(grads[0])) > 1e-3
  for g in grads[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7),
                 grads[0], g)


def _tx(lr=1e-2):
  opt = ml_collections.ConfigDict(common.optimizer_config().to_dict())
  opt.learning_rate, opt.warmup_steps, opt.schedule = lr, 0, "constant"
  opt.weight_decay = 0.0  # every change to the params comes from the gradient
  return make_optimizer(opt, 10)[0]


def test_pi_old_is_frozen_for_the_whole_generation_batch():
  model, params = _BIGRAM, _Bigram.init()
  batch = _rollouts()
  s = _settings(num_minibatches=2)
  tx = _tx()
  state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
  ratios = []
  for k in range(2):
    state, m = rl_update(state, _mb(batch, s, k, model, params), model=model, tx=tx,
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
    state, _ = rl_update(state, _mb(batch, s, 0, model, params), model=model, tx=tx,
                         settings=s)
    out.append(state.params)
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(out[0]), jax.tree.leaves(params))) > 1e-3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), *out)


def test_chunked_logprobs_and_entropy_equal_the_full_logits():
  """The chunked head (hidden / T in chunks that do not divide the row) against the full
  [B,T,V] logits / T: log-probs and entropy on the real tiny model, and the RL gradient on
  the stand-in with large logits (|z| ~ 50, near one-hot rows)."""
  model, params = _setup()
  batch = _rollouts()
  tokens, token_mask = jnp.asarray(batch.tokens_BT), jnp.asarray(batch.token_mask_BT)
  fn = jax.jit(token_logprobs, static_argnums=(0,), static_argnames=(
      "temperature", "with_entropy", "loss_chunk_tokens"))
  full = fn(model, params, tokens, token_mask, temperature=0.7, with_entropy=True,
            loss_chunk_tokens=0)
  chunked = fn(model, params, tokens, token_mask, temperature=0.7, with_entropy=True,
               loss_chunk_tokens=5)
  assert (batch.tokens_BT.shape[1] - 1) % 5
  for a, b in zip(full, chunked):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
  assert float(jnp.min(full[1])) >= 0 and float(jnp.max(full[1])) > 0.1

  bigram, bparams = _BIGRAM, _Bigram.init()
  bparams = {"emb": bparams["emb"] * 10.0, "lm_head": bparams["lm_head"]}
  s = _settings(temperature=0.7, num_minibatches=1)
  mb = _mb(batch, s)
  mb["old_logp_BT"] = mb["old_logp_BT"] - 0.3 * mb["mask_BT"]
  out = [jax.jit(functools.partial(accumulate_grads, model=bigram, settings=s,
                                   loss_chunk_tokens=c))(bparams, mb) for c in (0, 5)]
  (g0, l0, s0, *_), (g1, l1, s1, *_) = out
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  np.testing.assert_allclose(s1["entropy"], s0["entropy"], rtol=1e-5, atol=1e-6)
  assert float(s0["entropy"]) / float(s0["tokens"]) < 0.5   # near one-hot: adversarial
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), g0, g1)

  # Memory: no [B, *, V] value of the chunked update (forward or backward) is wider than a
  # chunk; the full-logits path holds the row's [B, T, V] logits (so the check can fail).
  def widest_logits(chunk):
    jaxpr = jax.make_jaxpr(functools.partial(accumulate_grads, model=bigram, settings=s,
                                             loss_chunk_tokens=chunk))(bparams, mb)
    return max((v.aval.shape[-2] for e in _all_eqns(jaxpr.jaxpr) for v in e.outvars
                if len(getattr(v.aval, "shape", ())) >= 3 and v.aval.shape[-1] == 260),
               default=0)

  assert widest_logits(0) >= s.seq_len - 1 and widest_logits(5) == 5


def _all_eqns(jaxpr):
  """Every equation of a jaxpr, sub-jaxprs (scan, checkpoint, custom rules) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _all_eqns(sub)


def _sharded_step(spec, devices, model, params, mb, s):
  tx = optax.sgd(1.0)  # the update is -grads: comparing params compares gradients
  mesh = sharding.make_mesh(spec, devices)
  shardings = state_shardings(model, tx, mesh)
  state = train_state_from_params(jax.device_put(params, shardings.params, may_alias=False),
                                  tx, mesh, shardings)
  step = make_rl_step(model, tx, mesh, shardings, settings=s)
  new, metrics = step(state, mb)
  updates = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, params)
  return updates, jax.device_get(metrics)


def test_rl_step_on_a_mesh_equals_one_device():
  """make_rl_step (the trainer's jit_step: donated state in its shardings, rows over the
  batch axes) on fsdp=2,tensor=2 takes one device's step: loss, metrics and updates. One
  softmax-attention layer: the mesh machinery, not the stack, is under test (compile time)."""
  config = tiny_config((1,), vocab_size=260, initializer_range=0.05)
  model, params = MiniMaxM1ForCausalLM(config), random_params(config, 1)
  s = _settings(num_minibatches=2)
  rng = np.random.default_rng(0)
  rows, T = s.minibatch_rows, s.seq_len
  lengths = np.array([T, T - 5, 9, T - 1])
  token_mask = np.arange(T)[None] < lengths[:, None]
  mask = (token_mask[:, 1:] & (np.arange(1, T)[None] >= 4)).astype(np.float32)
  mb = {"tokens_BT": np.where(token_mask, rng.integers(0, 260, (rows, T)), 0).astype(np.int32),
        "token_mask_BT": token_mask, "mask_BT": mask,
        # Not this policy's log-probs: r != 1, so the ratio metrics and clipping are live.
        "old_logp_BT": (rng.uniform(-7.0, -4.0, (rows, T - 1)) * mask).astype(np.float32),
        "adv_B": np.array([1.0, -0.5, 0.8, -1.2], np.float32),
        "group_B": np.array([0, 0, 1, 1], np.int32),
        "ref_logp_BT": np.zeros((rows, T - 1), np.float32)}
  one = _sharded_step("fsdp=1", jax.devices()[:1], model, params, mb, s)
  four = _sharded_step("fsdp=2,tensor=2", jax.devices()[:4], model, params, mb, s)
  for key in ("loss", "grad_norm", "entropy", "is_ratio/mean", "is_ratio/max"):
    np.testing.assert_allclose(four[1][key], one[1][key], rtol=1e-5, err_msg=key)
  assert float(one[1]["grad_norm"]) > 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(four[0]),
                          jax.tree.leaves(one[0])):
    err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    assert err <= 1e-5, (jax.tree_util.keystr(path), err)


def test_rl_step_refuses_a_mesh_that_does_not_split_its_rows():
  model, _ = _setup()
  s = _settings(num_minibatches=2)   # 4 rows per minibatch
  tx = optax.sgd(1.0)
  mesh = sharding.make_mesh("fsdp=8")
  with pytest.raises(ValueError, match="fsdp=8.*RL microbatch"):
    make_rl_step(model, tx, mesh, state_shardings(model, tx, mesh), settings=s)
  with pytest.raises(ValueError, match="RL minibatch keys"):
    accumulate_grads(_Bigram.init(), {"tokens_BT": None}, model=_BIGRAM, settings=s)
