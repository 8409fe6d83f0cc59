"""The sorted MoE dispatch through each grouped-matmul implementation equals the dense reference
(m1jax.layers.moe.swiglu_dense), forward and every gradient (x, w1, w3, w2, the router
weights), with empty experts, in float32 and bfloat16; SparseMoE with moe_impl "auto" equals
"dense" including the router parameter's gradient; a moe_impl the platform cannot run is a
ValueError naming what can. megablox runs in Pallas interpret mode, as on a TPU it compiles.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.layers import moe
from m1jax.ops import grouped_matmul as gm
from m1jax.ops.grouped_matmul_megablox import grouped_matmul_megablox
from tests.assertions import assert_close
from tests.helpers import tiny_config

N, M, F, E, R = 24, 16, 32, 4, 2


@pytest.fixture
def megablox_interpreted(monkeypatch):
  """Trace as for a TPU, with the megablox kernel interpreted on this CPU."""
  monkeypatch.setattr(gm, "lowering_platform", lambda: "tpu")
  monkeypatch.setattr(gm, "grouped_matmul_megablox",
                      functools.partial(grouped_matmul_megablox, interpret=True))


def _inputs(dtype, routing):
  rng = np.random.default_rng(3)
  # "skip-0-and-3": experts 0 and 3 get nobody (zero-size groups); "random": any 2 of 4.
  pool = [1, 2] if routing == "skip-0-and-3" else list(range(E))
  experts = np.stack([rng.permutation(pool)[:R] for _ in range(N)]).astype(np.int32)
  weights = rng.uniform(0.1, 1.0, (N, R))
  weights /= weights.sum(-1, keepdims=True)
  x = rng.standard_normal((N, M))
  ws = [rng.standard_normal(s) / np.sqrt(s[1]) for s in ((E, M, F), (E, M, F), (E, F, M))]
  ct = rng.standard_normal((N, M))
  cast = functools.partial(jnp.asarray, dtype=dtype)
  return (cast(x), *map(cast, ws), jnp.asarray(weights, jnp.float32), jnp.asarray(experts),
          cast(ct))


def _vjp(dispatch, x, w1, w3, w2, weights, experts, ct):
  y, pullback = jax.vjp(lambda *a: dispatch(*a, experts), x, w1, w3, w2, weights)
  return y, pullback(ct)


@pytest.mark.parametrize("impl, routing, dtype", [("chunked", "skip-0-and-3", "float32"),
                                                  ("chunked", "random", "bfloat16"),
                                                  ("megablox", "skip-0-and-3", "bfloat16")])
def test_sorted_dispatch_equals_dense_forward_and_gradients(request, impl, routing, dtype):
  if impl == "megablox":
    request.getfixturevalue("megablox_interpreted")
  args = _inputs(dtype, routing)
  sorted_impl = functools.partial(moe.swiglu_ragged, impl=impl)
  y, grads = jax.jit(lambda: _vjp(sorted_impl, *args))()
  y_ref, grads_ref = jax.jit(lambda: _vjp(moe.swiglu_dense, *args))()
  assert y.dtype == y_ref.dtype == jnp.dtype(dtype)
  assert_close(y, y_ref, dtype=dtype, name="y")
  for name, g, g_ref in zip(("dx", "dw1", "dw3", "dw2", "dweights"), grads, grads_ref):
    assert g.dtype == g_ref.dtype, name
    assert_close(g, g_ref, dtype=dtype, name=name)
  used = set(np.asarray(args[5]).ravel().tolist())
  for g in grads[1:4]:
    for e in range(E):
      assert np.any(np.asarray(g[e], np.float32)) == (e in used), e


def test_sparse_moe_auto_equals_dense_with_router_gradient():
  config = tiny_config(initializer_range=0.2)
  assert config.moe_impl == "auto" and gm.resolve("auto", jnp.float32) == "chunked"
  rng = np.random.default_rng(9)
  h = jnp.asarray(rng.standard_normal((2, 7, config.hidden_size)), jnp.float32)
  mask = jnp.asarray(rng.uniform(size=(2, 7)) > 0.3)
  params = nn.meta.unbox(jax.jit(moe.SparseMoE(config).init)(jax.random.key(0), h)["params"])

  def loss(params, h, impl):
    y, stats = moe.SparseMoE(config.replace(moe_impl=impl)).apply({"params": params}, h, mask)
    return jnp.sum(y * jnp.cos(h)) + jnp.sum(stats.prob_E ** 2)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
  (v_auto, g_auto), (v_dense, g_dense) = grad(params, h, "auto"), grad(params, h, "dense")
  assert_close(v_auto, v_dense, name="loss")
  flat_auto, flat_dense = (jax.tree_util.tree_leaves_with_path(g) for g in (g_auto, g_dense))
  for (path, a), (_, b) in zip(flat_auto, flat_dense):
    assert_close(a, b, name=jax.tree_util.keystr(path))
  assert np.any(np.asarray(g_auto[0]["router"]))


def test_moe_impl_the_platform_cannot_run_names_what_can():
  config = tiny_config(moe_impl="megablox")
  h = jnp.zeros((1, 4, config.hidden_size), jnp.float32)
  with pytest.raises(ValueError, match=r"megablox.*platform 'cpu'.*can run here: "
                                       r"ragged_dot, chunked"):
    jax.eval_shape(moe.SparseMoE(config).init, jax.random.key(0), h)
