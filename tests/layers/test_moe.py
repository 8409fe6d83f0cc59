"""MoE: ragged dispatch vs the dense reference (outputs and gradients), the router, the
SparseMoE module in both modes, and the Switch load-balancing loss (docs/MODEL.md §7).
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.layers.moe import (RouterStats, SparseMoE, route, router_stats, swiglu_dense,
                              swiglu_ragged)
from m1jax.losses import load_balancing_loss
from tests.assertions import assert_close
from tests.helpers import tiny_config

N, M, F, E = 12, 16, 24, 4
# Router weights large enough that the top-k choice is far from ties.
MOE_INIT = dict(initializer_range=0.2)


@dataclasses.dataclass(frozen=True)
class Routing:
  id: str
  top_k: int
  kind: str  # "random", "skip-0-and-3" or "all-to-2"


ROUTINGS = [
    Routing("top1-random", 1, "random"),
    Routing("top2-random", 2, "random"),
    Routing("topE-random", E, "random"),
    Routing("top1-experts0and3-empty", 1, "skip-0-and-3"),
    Routing("top2-experts0and3-empty", 2, "skip-0-and-3"),
    Routing("top1-all-to-expert2", 1, "all-to-2"),
]


def make_routing(rng, routing: Routing):
  """(weights_NK float32 summing to 1, experts_NK int32 with distinct experts per row)."""
  k = routing.top_k
  if routing.kind == "random":
    experts = np.stack([rng.permutation(E)[:k] for _ in range(N)])
  elif routing.kind == "skip-0-and-3":
    # Only experts 1 and 2 are ever chosen: 0 and 3 get zero-size groups.
    experts = np.stack([rng.permutation([1, 2])[:k] for _ in range(N)])
  else:
    experts = np.full((N, k), 2)
  weights = rng.uniform(0.1, 1.0, size=(N, k))
  weights /= weights.sum(-1, keepdims=True)
  return jnp.asarray(weights, jnp.float32), jnp.asarray(experts, jnp.int32)


def make_experts(rng, dtype):
  w1 = rng.standard_normal((E, M, F)) / np.sqrt(M)
  w3 = rng.standard_normal((E, M, F)) / np.sqrt(M)
  w2 = rng.standard_normal((E, F, M)) / np.sqrt(F)
  return tuple(jnp.asarray(w, dtype) for w in (w1, w3, w2))


def numpy_swiglu_moe(x, w1, w3, w2, weights, experts):
  """Token-by-token float64 reference: y_n = sum_k w_nk * E_{e_nk}(x_n)."""
  x, w1, w3, w2 = (np.asarray(a, np.float64) for a in (x, w1, w3, w2))
  y = np.zeros((x.shape[0], w2.shape[-1]))
  for n in range(x.shape[0]):
    for w, e in zip(np.asarray(weights[n], np.float64), np.asarray(experts[n])):
      gate, up = x[n] @ w1[e], x[n] @ w3[e]
      y[n] += w * ((gate / (1 + np.exp(-gate)) * up) @ w2[e])
  return y


@pytest.mark.parametrize("routing", ROUTINGS, ids=lambda r: r.id)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_ragged_equals_dense_forward_and_gradients(routing, dtype):
  dtype_name = jnp.dtype(dtype).name
  rng = np.random.default_rng(0)
  weights, experts = make_routing(rng, routing)
  if routing.kind == "skip-0-and-3":
    assert not np.isin([0, 3], np.asarray(experts)).any()
  x = jnp.asarray(rng.standard_normal((N, M)), dtype)
  w1, w3, w2 = make_experts(rng, dtype)
  cotangent = jnp.asarray(rng.standard_normal((N, M)), dtype)

  def vjp(fn):
    y, pullback = jax.vjp(lambda *a: fn(*a, weights, experts), x, w1, w3, w2)
    return y, pullback(cotangent)

  y_dense, grads_dense = jax.jit(lambda: vjp(swiglu_dense))()
  y_ragged, grads_ragged = jax.jit(lambda: vjp(swiglu_ragged))()
  assert y_ragged.dtype == y_dense.dtype == dtype
  # Both against float64 token-by-token math, then against each other.
  reference = numpy_swiglu_moe(x, w1, w3, w2, weights, experts)
  assert_close(y_dense, reference, dtype=dtype_name, name="dense-vs-numpy")
  assert_close(y_ragged, reference, dtype=dtype_name, name="ragged-vs-numpy")
  assert_close(y_ragged, y_dense, dtype=dtype_name, name="y")
  for name, g_ragged, g_dense in zip(("dx", "dw1", "dw3", "dw2"), grads_ragged, grads_dense):
    assert g_ragged.dtype == g_dense.dtype == dtype
    assert_close(g_ragged, g_dense, dtype=dtype_name, name=name)
  # Experts nobody routed to get exactly zero gradient in both paths.
  unused = sorted(set(range(E)) - set(np.asarray(experts).ravel().tolist()))
  for g_ragged, g_dense in zip(grads_ragged[1:], grads_dense[1:]):
    for e in unused:
      assert not np.any(np.asarray(g_ragged[e], np.float32)), e
      assert not np.any(np.asarray(g_dense[e], np.float32)), e
  # ...and used experts do get gradient (so the check above cannot pass vacuously).
  used = sorted(set(np.asarray(experts).ravel().tolist()))
  assert all(np.any(np.asarray(grads_ragged[1][e], np.float32)) for e in used)


# ------------------------------------------------------------------ router
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_route_equals_softmax_over_selected_logits(top_k):
  rng = np.random.default_rng(top_k)
  x = rng.standard_normal((N, M)).astype(np.float32)
  router = (rng.standard_normal((M, E)) / 2).astype(np.float32)
  probs, weights, experts = jax.jit(route, static_argnums=2)(jnp.asarray(x),
                                                             jnp.asarray(router), top_k)
  assert probs.dtype == weights.dtype == jnp.float32
  assert experts.dtype == jnp.int32 and experts.shape == weights.shape == (N, top_k)
  logits = x.astype(np.float64) @ router.astype(np.float64)
  full = np.exp(logits - logits.max(-1, keepdims=True))
  full /= full.sum(-1, keepdims=True)
  assert_close(probs, full, name="probs")
  # The chosen experts are the top-k logits, in descending order.
  expected_experts = np.argsort(-logits, axis=-1, kind="stable")[:, :top_k]
  np.testing.assert_array_equal(np.asarray(experts), expected_experts)
  # Renormalised top-k == softmax over only the selected logits.
  selected = np.take_along_axis(logits, expected_experts, axis=-1)
  softmax_selected = np.exp(selected - selected.max(-1, keepdims=True))
  softmax_selected /= softmax_selected.sum(-1, keepdims=True)
  assert_close(weights, softmax_selected, name="weights")
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)


def test_route_runs_in_float32_for_bf16_inputs():
  rng = np.random.default_rng(5)
  x16 = jnp.asarray(rng.standard_normal((N, M)), jnp.bfloat16)
  router = jnp.asarray(rng.standard_normal((M, E)), jnp.float32)
  probs, weights, experts = route(x16, router, 2)
  assert probs.dtype == weights.dtype == jnp.float32
  # Exactly the float32 computation on the same (bf16-representable) values; a bf16 router
  # would round logits to 8 bits and differ.
  ref_probs, ref_weights, ref_experts = route(x16.astype(jnp.float32), router, 2)
  np.testing.assert_array_equal(np.asarray(probs), np.asarray(ref_probs))
  np.testing.assert_array_equal(np.asarray(weights), np.asarray(ref_weights))
  np.testing.assert_array_equal(np.asarray(experts), np.asarray(ref_experts))
  bf16_logits = jnp.dot(x16, router.astype(jnp.bfloat16)).astype(jnp.float32)
  assert not np.allclose(np.asarray(jax.nn.softmax(bf16_logits)), np.asarray(probs), rtol=1e-4)


# ------------------------------------------------------------------ module
@functools.lru_cache(maxsize=None)
def moe_params(dtype: str):
  """One random init per dtype; top_k and moe_impl do not change the parameters."""
  config = tiny_config(**MOE_INIT, dtype=dtype, param_dtype=dtype)
  h = jnp.zeros((1, 2, config.hidden_size), dtype)
  return nn.meta.unbox(jax.jit(SparseMoE(config).init)(jax.random.key(0), h)["params"])


@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sparse_moe_dense_and_ragged_modes_agree(top_k, dtype):
  config = tiny_config(**MOE_INIT, num_experts_per_tok=top_k, dtype=dtype, param_dtype=dtype)
  rng = np.random.default_rng(7)
  h = jnp.asarray(rng.standard_normal((2, 9, config.hidden_size)), dtype)
  mask = jnp.asarray(rng.uniform(size=(2, 9)) > 0.3)
  dense = SparseMoE(config.replace(moe_impl="dense"))
  ragged = SparseMoE(config.replace(moe_impl="ragged"))
  params = moe_params(dtype)
  assert params["router"].dtype == jnp.float32
  assert params["w1"].dtype == jnp.dtype(dtype)
  y_dense, stats_dense = jax.jit(dense.apply)({"params": params}, h, mask)
  y_ragged, stats_ragged = jax.jit(ragged.apply)({"params": params}, h, mask)
  assert y_ragged.dtype == y_dense.dtype == jnp.dtype(dtype)
  assert_close(y_ragged, y_dense, dtype=dtype, name="moe")
  assert float(jnp.sum(jnp.abs(y_dense.astype(jnp.float32)))) > 0
  for a, b in zip(stats_ragged, stats_dense):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(float(stats_dense.tokens), float(np.sum(np.asarray(mask))))


# ------------------------------------------------------------------ load balancing
def numpy_switch_loss(probs_LNE: np.ndarray, experts_LNK: np.ndarray) -> float:
  """transformers' load_balancing_loss_func on the concatenated layers, in float64."""
  num_experts = probs_LNE.shape[-1]
  probs = probs_LNE.reshape(-1, num_experts).astype(np.float64)            # [rows, E]
  experts = experts_LNK.reshape(probs.shape[0], -1)                        # [rows, k]
  rows = probs.shape[0]
  counts = np.zeros(num_experts)
  for row in experts:
    for e in row:
      counts[e] += 1
  f = counts / rows
  p_mean = probs.mean(0)
  return float(num_experts * np.sum(f * p_mean))


def _layer_routing(rng, layers, tokens, top_k):
  x = jnp.asarray(rng.standard_normal((layers, tokens, M)), jnp.float32)
  router = jnp.asarray(rng.standard_normal((layers, M, E)), jnp.float32)
  routed = [route(x[l], router[l], top_k) for l in range(layers)]
  probs = jnp.stack([r[0] for r in routed])
  experts = jnp.stack([r[2] for r in routed])
  return probs, experts


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_matches_switch_over_all_layers(top_k):
  rng = np.random.default_rng(11)
  probs, experts = _layer_routing(rng, 3, 10, top_k)
  stats = jax.tree.map(lambda *s: jnp.stack(s),
                       *[router_stats(probs[l], experts[l], None) for l in range(3)])
  loss = float(load_balancing_loss(stats))
  expected = numpy_switch_loss(np.asarray(probs), np.asarray(experts))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  # Not the same as averaging per-layer losses (f and P are pooled before the product).
  per_layer = np.mean([numpy_switch_loss(np.asarray(probs[l:l + 1]), np.asarray(experts[l:l + 1]))
                       for l in range(3)])
  assert abs(per_layer - expected) > 1e-4


def test_load_balancing_loss_ignores_masked_tokens():
  rng = np.random.default_rng(12)
  layers, tokens = 2, 14
  probs, experts = _layer_routing(rng, layers, tokens, 2)
  mask = rng.uniform(size=tokens) > 0.4
  assert 0 < mask.sum() < tokens
  masked = jax.tree.map(lambda *s: jnp.stack(s), *[
      router_stats(probs[l], experts[l], jnp.asarray(mask)) for l in range(layers)])
  kept = jax.tree.map(lambda *s: jnp.stack(s), *[
      router_stats(probs[l][mask], experts[l][mask], None) for l in range(layers)])
  np.testing.assert_allclose(float(load_balancing_loss(masked)),
                             float(load_balancing_loss(kept)), rtol=1e-6)
  np.testing.assert_allclose(
      float(load_balancing_loss(masked)),
      numpy_switch_loss(np.asarray(probs)[:, mask], np.asarray(experts)[:, mask]), rtol=1e-6)
  unmasked = jax.tree.map(lambda *s: jnp.stack(s), *[
      router_stats(probs[l], experts[l], None) for l in range(layers)])
  assert abs(float(load_balancing_loss(unmasked)) - float(load_balancing_loss(masked))) > 1e-4


def test_perfectly_balanced_uniform_router_gives_loss_one():
  # f_e = k/E and P_e = 1/E for every expert: E * sum_e (k/E)(1/E) = k.
  top_k = 2
  stats = RouterStats(selected_E=jnp.full((3, E), 10.0 * top_k / E),
                      prob_E=jnp.full((3, E), 10.0 / E), tokens=jnp.full((3,), 10.0))
  np.testing.assert_allclose(float(load_balancing_loss(stats)), top_k, rtol=1e-6)
