"""The chunked LM head + CE (m1jax/chunked_loss.py) equals the full-logits loss, value and
gradients, and the trainer's loss is the same with either path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.chunked_loss import (chunked_next_token_loss, token_log_probs,
                                token_log_probs_and_entropy)
from m1jax.losses import IGNORE_INDEX, next_token_loss
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.train.step import _forward
from tests.assertions import assert_close
from tests.helpers import random_ids, random_params, tiny_config

B, T = 2, 13  # T - 1 = 12 targets: not a multiple of the chunk (5)
CHUNK = 5


def _setup(lm_head_fp32=True, dtype="float32"):
  cfg = tiny_config(lm_head_fp32=lm_head_fp32, dtype=dtype)
  params = random_params(cfg, 0)
  ids = random_ids(1, B, T)
  labels = np.asarray(ids).copy()
  labels[0, :4] = IGNORE_INDEX  # a prompt
  labels[1, -2:] = IGNORE_INDEX  # padding
  return MiniMaxM1ForCausalLM(cfg), params, ids, jnp.asarray(labels)


def _full(model, params, ids, labels):
  return next_token_loss(model.apply({"params": params}, ids).logits, labels)


def _chunked(model, params, ids, labels):
  hidden = model.apply({"params": params}, ids, return_hidden=True).hidden
  return chunked_next_token_loss(hidden, params["lm_head"], labels, model.config,
                                 chunk_tokens=CHUNK)


@pytest.mark.parametrize("lm_head_fp32", [True, False], ids=["fp32_head", "dtype_head"])
def test_chunked_ce_equals_full_ce_value_and_gradients(lm_head_fp32):
  model, params, ids, labels = _setup(lm_head_fp32)
  full, g_full = jax.value_and_grad(_full, argnums=1)(model, params, ids, labels)
  chunked, g_chunked = jax.jit(jax.value_and_grad(_chunked, argnums=1),
                               static_argnums=0)(model, params, ids, labels)
  assert_close(chunked, full, tol=1e-6, name="loss")
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(g_chunked),
                          jax.tree.leaves(g_full)):
    assert_close(a, e, tol=1e-5, name=jax.tree_util.keystr(path))


def test_token_log_probs_equal_log_softmax_of_model_logits():
  model, params, ids, _ = _setup()
  logits = model.apply({"params": params}, ids).logits
  expect = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ids[:, 1:, None], -1)[..., 0]
  hidden = model.apply({"params": params}, ids, return_hidden=True).hidden
  for chunk in (1, CHUNK, 64):
    got = token_log_probs(hidden[:, :-1], params["lm_head"], ids[:, 1:], model.config,
                          chunk_tokens=chunk)
    assert got.shape == (B, T - 1) and got.dtype == jnp.float32
    assert_close(got, expect, tol=1e-6, name=f"chunk {chunk}")


def test_return_hidden_keeps_logits_path_and_stats():
  model, params, ids, _ = _setup()
  full = model.apply({"params": params}, ids)
  hid = model.apply({"params": params}, ids, return_hidden=True)
  assert hid.logits is None and full.hidden is None
  assert hid.hidden.shape == (B, T, model.config.hidden_size)
  assert_close(hid.aux_loss, full.aux_loss, tol=0.0)


def test_bad_chunk_raises():
  model, params, ids, labels = _setup()
  hidden = model.apply({"params": params}, ids, return_hidden=True).hidden
  with pytest.raises(ValueError, match="chunk_tokens must be a positive int, got 0"):
    token_log_probs(hidden, params["lm_head"], ids, model.config, chunk_tokens=0)


def test_trainer_forward_same_loss_aux_and_gradients_with_either_path():
  """m1jax.train.step._forward (CE sum, count, aux) with loss_chunk_tokens 5 vs 0 (full),
  on a packed batch with ignored targets; gradients of CE + aux as the trainer weighs them."""
  model, params, ids, _ = _setup()
  seg = np.ones((B, T), np.int32)
  seg[0, 7:] = 2
  seg[1, -3:] = 0
  pos = np.concatenate([np.arange(7), np.arange(T - 7)])[None].repeat(B, 0)
  batch = {"tokens": ids, "positions": jnp.asarray(pos, jnp.int32),
           "segment_ids": jnp.asarray(seg),
           # The prompt of document 1 is not trained on.
           "loss_mask": jnp.asarray(np.arange(T)[None].repeat(B, 0) >= 3)}
  coef = model.config.router_aux_loss_coef

  def objective(p, chunk):
    ce_sum, count, aux = _forward(model, p, batch, chunk)
    return ce_sum / count + coef * aux, (ce_sum, count, aux)

  results = {c: jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)(params, c)
             for c in (0, CHUNK)}
  (loss0, (ce0, n0, aux0)), g0 = results[0]
  (loss1, (ce1, n1, aux1)), g1 = results[CHUNK]
  assert int(n0) == int(n1) > 0
  assert_close(ce1, ce0, tol=1e-6, name="ce_sum")
  assert_close(aux1, aux0, tol=0.0, name="aux")
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
    assert_close(a, e, tol=1e-5, name=jax.tree_util.keystr(path))


def test_token_log_probs_and_entropy_equal_the_full_distribution():
  """Entropy by chunks against -sum(p log p) of the full logits, on rows from near-uniform
  to saturated (|logit| ~ 1e3: p underflows to 0 for all but one token), with out-of-range
  targets; the log-probs and their gradient equal token_log_probs', the entropy has none."""
  import types
  cfg = types.SimpleNamespace(lm_head_fp32=True, dtype="float32")
  rng = np.random.default_rng(0)
  h = rng.normal(size=(3, T - 1, 8)).astype(np.float32)
  h *= np.array([1e-3, 1.0, 300.0], np.float32)[:, None, None]  # uniform .. one-hot rows
  h, w = jnp.asarray(h), jnp.asarray(rng.normal(size=(8, 50)).astype(np.float32))
  targets = jnp.asarray(rng.integers(0, 50, (3, T - 1))).at[0, 0].set(IGNORE_INDEX)
  logp_full = jax.nn.log_softmax(h @ w, axis=-1)
  entropy_full = -jnp.sum(jnp.exp(logp_full) * logp_full, axis=-1)
  fn = lambda h, w: token_log_probs_and_entropy(h, w, targets, cfg, chunk_tokens=CHUNK)
  logp, entropy = jax.jit(fn)(h, w)
  assert_close(entropy, entropy_full, tol=1e-5, name="entropy")
  assert float(entropy[0].min()) > 3.9 and float(entropy[2].max()) < 1e-3
  assert_close(logp, token_log_probs(h, w, targets, cfg, chunk_tokens=CHUNK), tol=0,
               name="logp")
  g = jax.grad(lambda h, w: jnp.sum(fn(h, w)[0]), argnums=(0, 1))(h, w)
  g_ref = jax.grad(lambda h, w: jnp.sum(token_log_probs(h, w, targets, cfg,
                                                        chunk_tokens=CHUNK)),
                   argnums=(0, 1))(h, w)
  for a, e in zip(g, g_ref):
    assert_close(a, e, tol=1e-6, name="logp grad")
  assert all(float(jnp.max(jnp.abs(x))) == 0 for x in
             jax.grad(lambda h, w: jnp.sum(fn(h, w)[1]), argnums=(0, 1))(h, w))
