"""The sampler on fake logits: greedy, top-k and top-p supports, log-probs, bad settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.inference.sampling import sample_tokens, validate_sampling

LOGITS = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]], jnp.float32))


def _draws(n=400, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: sample_tokens(LOGITS, k, **kw)[0])(keys))


def test_greedy_is_argmax_with_its_log_prob():
  tokens, log_probs = sample_tokens(LOGITS, jax.random.key(0), 0.0)
  np.testing.assert_array_equal(tokens, [0, 3])
  np.testing.assert_allclose(log_probs, np.log([0.5, 0.5]), rtol=1e-6)


def test_top_k_and_top_p_restrict_the_support():
  assert set(_draws(temperature=1.0, top_k=2)[:, 0]) == {0, 1}
  # Mass before token 0 is 0, before 1 is 0.5 (< 0.6 keeps it), before 2 is 0.8: keep {0, 1}.
  assert set(_draws(temperature=1.0, top_p=0.6)[:, 0]) == {0, 1}
  assert set(_draws(temperature=1.0, top_p=0.5)[:, 1]) == {3}
  assert set(_draws(temperature=1.0)[:, 0]) == {0, 1, 2, 3}


def test_sampled_frequencies_and_log_probs_follow_temperature():
  draws = _draws(n=4000, temperature=1.0)[:, 0]
  np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.5, 0.3, 0.15, 0.05],
                             atol=0.03)
  tokens, log_probs = sample_tokens(LOGITS, jax.random.key(3), 2.0)
  expected = jax.nn.log_softmax(LOGITS / 2.0)[jnp.arange(2), tokens]
  np.testing.assert_allclose(log_probs, expected, rtol=1e-6)


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-0.1, top_k=0, top_p=1.0), "temperature"),
    (dict(temperature=1.0, top_k=0, top_p=0.0), "top_p"),
    (dict(temperature=1.0, top_k=0, top_p=1.5), "top_p"),
    (dict(temperature=1.0, top_k=-1, top_p=1.0), "top_k"),
])
def test_bad_settings_raise(kw, match):
  with pytest.raises(ValueError, match=match):
    validate_sampling(**kw)
