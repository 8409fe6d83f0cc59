"""The small-token gathered MoE dispatch against the dense reference and the sorted
ragged_dot dispatch: forward and every gradient, 1 token, tokens < experts (empty experts),
an expert picked by every token, bf16; and that "auto" takes it only at few tokens."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.layers import moe, moe_gathered

E, M, F, R = 8, 16, 24, 2


def _inputs(n, dtype, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 5)
  # Large-magnitude activations and skewed router: adversarial for summation order.
  x = 4.0 * jax.random.normal(ks[0], (n, M), jnp.float32)
  w1, w3 = (jax.random.normal(k, (E, M, F), jnp.float32) / 4 for k in ks[1:3])
  w2 = jax.random.normal(ks[3], (E, F, M), jnp.float32) / 4
  router = jax.random.normal(ks[4], (M, E), jnp.float32)
  _, weights, experts = moe.route(x, router, R)
  return x.astype(dtype), w1, w3, w2, weights, experts


@pytest.mark.parametrize("n", [1, 3])
def test_matches_dense_and_sorted_forward_and_grad(n):
  x, w1, w3, w2, weights, experts = _inputs(n, jnp.float32)
  if n == 3:  # every token picks expert 5: one full expert, the others mostly empty
    experts = experts.at[:, 0].set(5).at[:, 1].set(jnp.array([0, 2, 7]))
  assert n * R <= E and moe_gathered.use_gathered(n, R, E)

  def loss(fn):
    def f(x, w1, w3, w2, weights):
      y = fn(x, w1, w3, w2, weights, experts)
      return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))
    return jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4))(x, w1, w3, w2, weights)

  got_v, got_g = loss(moe_gathered.swiglu_gathered)
  for ref in (moe.swiglu_dense,
              lambda *a: moe.swiglu_ragged(*a, impl="ragged_dot")):
    ref_v, ref_g = loss(ref)
    np.testing.assert_allclose(got_v, ref_v, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_g, ref_g):
      np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  # Unselected experts get exactly zero weight gradient.
  unused = np.setdiff1d(np.arange(E), np.asarray(experts))
  assert unused.size and not np.any(np.asarray(got_g[1])[unused])


def test_bf16_matches_dense():
  x, w1, w3, w2, weights, experts = _inputs(2, jnp.bfloat16, seed=1)
  got = moe_gathered.swiglu_gathered(x, w1, w3, w2, weights, experts)
  ref = moe.swiglu_dense(x, w1, w3, w2, weights, experts)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32),
                             rtol=2e-2, atol=2e-2)


def test_auto_dispatch_by_static_token_count():
  def prims(n):
    x, w1, w3, w2, weights, experts = _inputs(n, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda *a: moe.swiglu("auto", *a))(x, w1, w3, w2, weights, experts)
    return str(jaxpr)
  assert " sort[" not in prims(E // R)    # N*R == E: gathered, no sort
  assert " sort[" in prims(E // R + 1)    # one more token: the sorted dispatch


def test_bad_shapes_raise():
  x, w1, w3, w2, weights, experts = _inputs(2, jnp.float32)
  with pytest.raises(ValueError, match="experts_NR"):
    moe_gathered.swiglu_gathered(x[:1], w1, w3, w2, weights, experts)
