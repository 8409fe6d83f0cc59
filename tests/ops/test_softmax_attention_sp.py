"""Sequence-parallel softmax attention (m1jax/ops/softmax_attention_sp.py) against one
device: the XLA reference path with packed documents, padding keys and GQA, forward and
gradients; the compiled step gathers K/V (never the [T,S] scores) and reduce-scatters dK/dV.
(The blockwise path runs sequence-parallel in tests/train/test_sequence_parallel.py.)"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import sharding
from m1jax.layers.cache_info import EMPTY_POSITION
from m1jax.ops import attention_impl
from tests.assertions import assert_close

B, T, H, K, D = 2, 16, 4, 2, 8


def _inputs():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)
  k, v = (jnp.asarray(rng.standard_normal((B, T, K, D)), jnp.float32) for _ in range(2))
  # Row 0: documents starting at 4 (a shard's first token on sequence=4) and 7 (its last);
  # row 1: one document, its first two tokens left padding (never a key).
  seg = np.ones((B, T), np.int32)
  seg[0, 4:], seg[0, 7:] = 2, 3
  pos = np.concatenate([np.r_[0:4, 0:3, 0:9][None], np.r_[0, 0, 0:14][None]])
  k_pos = pos.copy()
  k_pos[1, :2] = EMPTY_POSITION
  return q, k, v, jnp.asarray(pos), jnp.asarray(k_pos), jnp.asarray(seg)


def _loss_and_grads(q, k, v, pos, k_pos, seg):
  def loss(q, k, v):
    o = attention_impl.attend("xla", q, k, v, pos, k_pos, seg, padded=True)
    return jnp.sum(jnp.sin(o)), o
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)


def test_kv_all_gather_equals_one_device_and_gathers_only_kv():
  args = _inputs()
  (_, ref_out), ref_grads = _loss_and_grads(*args)
  with sharding.use_mesh(sharding.make_mesh("data=2,sequence=4")):
    (_, out), grads = _loss_and_grads(*args)
    hlo = jax.jit(lambda *a: jax.grad(lambda q, k, v: jnp.sum(attention_impl.attend(
        "xla", q, k, v, *a[3:], padded=True)), argnums=(0, 1, 2))(*a[:3])).lower(
            *args).compile().as_text()
  assert_close(out, ref_out, tol=1e-6, name="out")
  for name, g, r in zip(("d_q", "d_k", "d_v"), grads, ref_grads):
    assert_close(g, r, tol=1e-6, name=name)
  gathers = re.findall(r"= (\S+) all-gather\(", hlo)
  scatters = re.findall(r"= (\S+) reduce-scatter\(", hlo)
  # K and V whole along T for this row shard ([B/2,T,K,D]), key positions and segment ids;
  # nothing [.., T, T] (scores) and no q.
  assert sorted(s.split("{")[0] for s in gathers if s.startswith("f32")) == [
      f"f32[1,{T},{K},{D}]"] * 2, gathers
  assert all(s.startswith(("f32", "s32")) for s in gathers), gathers
  assert sorted(s.split("{")[0] for s in scatters) == [f"f32[1,{T // 4},{K},{D}]"] * 2, scatters


def test_length_not_divisible_by_sequence_names_both():
  q, k, v, pos, k_pos, seg = (x[:, :14] for x in _inputs())
  with sharding.use_mesh(sharding.make_mesh("data=2,sequence=4")):
    with pytest.raises(ValueError, match=r"sequence length T=14 .* not divisible by mesh "
                                         r"axes sequence = 4"):
      attention_impl.attend("xla", q, k, v, pos, k_pos, seg)
