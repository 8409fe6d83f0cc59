"""Token sampling from float32 logits: greedy, temperature, top-k, top-p, and the log-prob of
the sampled token. Works on any [B,V] logits (tested with fake ones).

Log-probs are those of the model's distribution at the sampling temperature,
log_softmax(logits / temperature) (temperature 0: log_softmax(logits)), BEFORE top-k/top-p
truncation: the quantity a policy-gradient trainer recomputes from the same logits.
"""
import jax
import jax.numpy as jnp


def validate_sampling(temperature: float, top_k: int, top_p: float) -> None:
  """Raises ValueError for settings that define no distribution."""
  if not temperature >= 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature!r}")
  if not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}")
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f"top_k must be an int >= 0 (0 = off); got {top_k!r}")


def _truncate(scaled_BV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """-inf outside the top-k and outside the smallest nucleus holding top_p of the mass."""
  neg_inf = jnp.array(-jnp.inf, scaled_BV.dtype)
  if 0 < top_k < scaled_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(scaled_BV, top_k)[0][:, -1:]
    scaled_BV = jnp.where(scaled_BV < kth_B1, neg_inf, scaled_BV)
  if top_p < 1:
    sorted_BV = -jnp.sort(-scaled_BV, axis=-1)
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    # Keep a token while the mass before it is < top_p (the first token always stays).
    keep_count_B1 = jnp.sum(mass_before_BV < top_p, axis=-1, keepdims=True)
    threshold_B1 = jnp.take_along_axis(sorted_BV, keep_count_B1 - 1, axis=-1)
    scaled_BV = jnp.where(scaled_BV < threshold_B1, neg_inf, scaled_BV)
  return scaled_BV


def sample_tokens(logits_BV: jax.Array, key: jax.Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0):
  """-> (tokens_B int32, log_probs_B float32). temperature/top_k/top_p are Python values."""
  logits_BV = logits_BV.astype(jnp.float32)
  if temperature == 0:
    tokens_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    log_probs_BV = jax.nn.log_softmax(logits_BV, axis=-1)
  else:
    scaled_BV = logits_BV / jnp.float32(temperature)
    log_probs_BV = jax.nn.log_softmax(scaled_BV, axis=-1)
    tokens_B = jax.random.categorical(key, _truncate(scaled_BV, top_k, top_p),
                                      axis=-1).astype(jnp.int32)
  log_prob_B = jnp.take_along_axis(log_probs_BV, tokens_B[:, None], axis=-1)[:, 0]
  return tokens_B, log_prob_B
