"""Language-model and router losses, matching transformers' MiniMaxForCausalLM."""
import jax
import jax.numpy as jnp

from m1jax.layers.moe import RouterStats

IGNORE_INDEX = -100


def next_token_loss(logits_BTV: jax.Array, labels_BT: jax.Array,
                    ignore_index: int = IGNORE_INDEX) -> jax.Array:
  """Mean cross-entropy of logits[:, t] against labels[:, t+1], skipping `ignore_index`.

  This is transformers' convention: labels are the input ids, shifted inside the loss.
  """
  logits = logits_BTV[:, :-1].astype(jnp.float32)
  targets = labels_BT[:, 1:]
  valid = targets != ignore_index
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logprobs, jnp.where(valid, targets, 0)[..., None], axis=-1)
  nll = -jnp.where(valid, picked[..., 0], 0.0)
  return jnp.sum(nll) / jnp.maximum(jnp.sum(valid), 1)


def load_balancing_loss(stats: RouterStats) -> jax.Array:
  """Switch-style aux loss over ALL layers jointly (stats carry a leading layer axis).

  E * sum_e f_e * P_e, where f_e is the fraction of top-k slots that chose expert e and P_e
  the mean router probability of e, both averaged over every (layer, token) row.
  """
  num_experts = stats.prob_E.shape[-1]
  rows = jnp.maximum(jnp.sum(stats.tokens), 1.0)
  fraction_E = jnp.sum(stats.selected_E, axis=0) / rows
  mean_prob_E = jnp.sum(stats.prob_E, axis=0) / rows
  return num_experts * jnp.sum(fraction_E * mean_prob_E)
