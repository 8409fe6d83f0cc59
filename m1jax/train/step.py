"""The jitted train and eval steps: loss = CE + router_aux_coef * aux, grad accumulation."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from m1jax.chunked_loss import DEFAULT_CHUNK, next_token_loss_sum
from m1jax.losses import IGNORE_INDEX, next_token_loss
from m1jax.train.data.pipeline import targets


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def _forward(model, params, batch, loss_chunk_tokens: int = DEFAULT_CHUNK):
  """Returns (CE summed over targets, number of targets, aux loss) for one (micro)batch.

  loss_chunk_tokens > 0: the LM head and CE run in chunks of that many positions per row
  (m1jax.chunked_loss), never holding the [B,T,V] fp32 logits; 0: full logits.
  """
  labels = targets(batch)
  if loss_chunk_tokens:
    out = model.apply({"params": params}, batch["tokens"], batch["positions"],
                      segment_ids_BT=batch["segment_ids"], return_hidden=True)
    ce_sum, count = next_token_loss_sum(out.hidden, params["lm_head"], labels, model.config,
                                        chunk_tokens=loss_chunk_tokens)
    return ce_sum, count, out.aux_loss
  out = model.apply({"params": params}, batch["tokens"], batch["positions"],
                    segment_ids_BT=batch["segment_ids"])
  count = jnp.sum(labels[:, 1:] != IGNORE_INDEX)
  ce_sum = next_token_loss(out.logits, labels) * jnp.maximum(count, 1)
  return ce_sum, count, out.aux_loss


@functools.partial(jax.jit, static_argnames=("model", "tx", "accum_steps", "aux_coef",
                                             "loss_chunk_tokens"))
def train_step(state: TrainState, batch: dict, *, model, tx, accum_steps: int,
               aux_coef: float,
               loss_chunk_tokens: int = DEFAULT_CHUNK) -> tuple[TrainState, dict]:
  """One optimizer step over `batch` [B,T], split into `accum_steps` microbatches.

  The CE is a mean over every target of the whole batch (microbatches weighted by their
  target counts), so accumulation changes memory, not the loss; the aux loss is the mean of
  the microbatches' aux losses.
  """
  total = jnp.maximum(jnp.sum(targets(batch)[:, 1:] != IGNORE_INDEX), 1)
  micro = jax.tree.map(lambda x: x.reshape((accum_steps, -1) + x.shape[1:]), batch)

  def objective(params, mb):
    ce_sum, _, aux = _forward(model, params, mb, loss_chunk_tokens)
    return ce_sum / total + aux_coef * aux / accum_steps, (ce_sum, aux)

  grad_fn = jax.grad(objective, has_aux=True)

  def accumulate(carry, mb):
    grads, ce_sum, aux = carry
    g, (c, a) = grad_fn(state.params, mb)
    return (jax.tree.map(jnp.add, grads, g), ce_sum + c, aux + a), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  (grads, ce_sum, aux_sum), _ = jax.lax.scan(
      accumulate, (zeros, jnp.float32(0), jnp.float32(0)), micro)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ce = ce_sum / total
  aux = aux_sum / accum_steps
  metrics = {"loss": ce + aux_coef * aux, "ce_loss": ce, "aux_loss": aux,
             "grad_norm": optax.tree.norm(grads),
             "tokens": jnp.sum(batch["segment_ids"] != 0), "targets": total,
             # The loss above was computed before this update; an update can still blow the
             # params up, and those must never reach a checkpoint.
             "params_finite": jnp.all(jnp.asarray(
                 [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))}
  return TrainState(state.step + 1, params, opt_state), metrics


@functools.partial(jax.jit, static_argnames=("model", "loss_chunk_tokens"))
def eval_step(params, batch: dict, *, model, loss_chunk_tokens: int = DEFAULT_CHUNK) -> dict:
  """Summed CE and target count of a packed batch (held-out loss = sum / count)."""
  ce_sum, count, aux = _forward(model, params, batch, loss_chunk_tokens)
  return {"ce_sum": ce_sum, "count": count, "aux_loss": aux}


@functools.partial(jax.jit, static_argnames=("model",))
def predict_step(params, tokens_BT, *, model):
  """Greedy next-token predictions [B,T] int32 (teacher forcing, one document per row)."""
  return jnp.argmax(model.apply({"params": params}, tokens_BT).logits, axis=-1).astype(jnp.int32)
