"""The train and eval steps: loss = CE + router_aux_coef * aux, grad accumulation.

`make_train_step` jits `train_step` for a mesh: state in and out in its shardings (and
donated), the batch split over the mesh's batch axes, activation constraints active. The
building blocks (`microbatches`, `accumulate_gradients`, `apply_gradients`, `jit_step`) are
shared with the RL update (m1jax/rl/step.py), which differs only in its objective.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from m1jax import sharding
from m1jax.layers import params as lp
from m1jax.chunked_loss import DEFAULT_CHUNK, next_token_loss_sum
from m1jax.losses import IGNORE_INDEX, next_token_loss
from m1jax.train.data.pipeline import targets
from m1jax.train.state import TrainState

__all__ = ["TrainState", "accumulate_gradients", "all_finite", "apply_gradients",
           "batch_sharding", "check_batch", "eval_step", "jit_step", "make_train_step",
           "microbatches", "predict_step", "train_step"]


def _forward(model, params, batch, loss_chunk_tokens: int = DEFAULT_CHUNK,
             return_dropped: bool = False):
  """Returns (CE summed over targets, number of targets, aux loss) for one (micro)batch,
  plus, with `return_dropped`, the MoE assignments the padded expert-parallel exchange
  dropped (int32, summed over layers; 0 on every other path).

  loss_chunk_tokens > 0: the LM head and CE run in chunks of that many positions per row
  (m1jax.chunked_loss), never holding the [B,T,V] fp32 logits; 0: full logits.
  """
  labels = targets(batch)
  if loss_chunk_tokens:
    out = model.apply({"params": params}, batch["tokens"], batch["positions"],
                      segment_ids_BT=batch["segment_ids"], return_hidden=True)
    ce_sum, count = next_token_loss_sum(out.hidden, params["lm_head"], labels, model.config,
                                        chunk_tokens=loss_chunk_tokens)
  else:
    out = model.apply({"params": params}, batch["tokens"], batch["positions"],
                      segment_ids_BT=batch["segment_ids"])
    count = jnp.sum(labels[:, 1:] != IGNORE_INDEX)
    ce_sum = next_token_loss(out.logits, labels) * jnp.maximum(count, 1)
  if return_dropped:
    return ce_sum, count, out.aux_loss, jnp.sum(jnp.asarray(out.router_stats.dropped, jnp.int32))
  return ce_sum, count, out.aux_loss


def microbatches(batch, accum_steps: int):
  """Splits every [B, ...] array of `batch` into [accum_steps, B/accum_steps, ...].

  Microbatch i holds rows i, i + accum_steps, ...: each device's contiguous block of rows
  then splits evenly into the microbatches, so no microbatch needs rows moved between
  devices.
  """
  return jax.tree.map(lambda x: x.reshape((-1, accum_steps) + x.shape[1:]).swapaxes(0, 1),
                      batch)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def accumulate_gradients(params, micro, objective, aux0, combine=_add):
  """(summed grads, combined aux) of `objective(params, mb) -> (scalar, aux)` over the
  leading axis of `micro`, one microbatch at a time in a lax.scan (memory of one
  microbatch). Grads accumulate in float32; aux starts at `aux0` and folds with `combine`
  (a sum unless given, e.g. max/min for extremes)."""
  grad_fn = jax.grad(objective, has_aux=True)

  def accumulate(carry, mb):
    grads, aux = carry
    g, a = grad_fn(params, mb)
    return (_add(grads, g), combine(aux, a)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  return jax.lax.scan(accumulate, (zeros, aux0), micro)[0]


def all_finite(tree) -> jax.Array:
  """Whether every leaf of `tree` is finite: an update can blow the params up after a finite
  loss, and those params must never reach a checkpoint."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(tree)]))


def apply_gradients(state: TrainState, grads, tx) -> tuple[TrainState, object]:
  """One optimizer step: (the new state, the grads cast to the params' dtypes)."""
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return TrainState(state.step + 1, params, opt_state), grads


def train_step(state: TrainState, batch: dict, *, model, tx, accum_steps: int,
               aux_coef: float,
               loss_chunk_tokens: int = DEFAULT_CHUNK) -> tuple[TrainState, dict]:
  """One optimizer step over `batch` [B,T], split into `accum_steps` microbatches (not
  jitted: `make_train_step` jits it for a mesh).

  The CE is a mean over every target of the whole batch (microbatches weighted by their
  target counts), so accumulation changes memory, not the loss; the aux loss is the mean of
  the microbatches' aux losses.
  """
  total = jnp.maximum(jnp.sum(targets(batch)[:, 1:] != IGNORE_INDEX), 1)

  def objective(params, mb):
    mb = {k: lp.constrain(v, (lp.BATCH, lp.LENGTH)) for k, v in mb.items()}
    ce_sum, _, aux, dropped = _forward(model, params, mb, loss_chunk_tokens,
                                       return_dropped=True)
    return ce_sum / total + aux_coef * aux / accum_steps, (ce_sum, aux, dropped)

  grads, (ce_sum, aux_sum, dropped) = accumulate_gradients(
      state.params, microbatches(batch, accum_steps), objective,
      (jnp.float32(0), jnp.float32(0), jnp.int32(0)))
  state, grads = apply_gradients(state, grads, tx)
  ce = ce_sum / total
  aux = aux_sum / accum_steps
  tokens = jnp.sum(batch["segment_ids"] != 0)
  # Every counted token makes top_k assignments in each layer; the padded expert-parallel
  # exchange (moe_all_to_all=padded, capacity below the worst case) may drop some.
  assignments = tokens * model.config.num_experts_per_tok * model.config.num_hidden_layers
  metrics = {"loss": ce + aux_coef * aux, "ce_loss": ce, "aux_loss": aux,
             "grad_norm": optax.tree.norm(grads),
             "moe/dropped": dropped,
             "moe/drop_fraction": dropped / jnp.maximum(assignments, 1),
             "tokens": tokens, "targets": total,
             # The loss above was computed before this update.
             "params_finite": all_finite(state.params)}
  return state, metrics


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Where a [B,T] data array lives: rows over the batch axes, tokens over `sequence`."""
  return sharding.activation_sharding(mesh, (lp.BATCH, lp.LENGTH))


def check_batch(mesh: Mesh, batch_size: int, seq_len: int, accum_steps: int) -> None:
  """Raises ValueError, naming the mesh, unless every microbatch splits over the mesh."""
  rows = batch_size // accum_steps
  spec = batch_sharding(mesh).spec
  sharding.check_divisible((rows, seq_len), spec, mesh,
                           f"a microbatch (train.batch_size={batch_size} / "
                           f"train.grad_accum_steps={accum_steps} rows x train.seq_len)",
                           ("batch", "length"))


def jit_step(step_fn, mesh: Mesh, state_shardings: TrainState, batch_shardings):
  """`step(state, batch) -> (state, metrics)`: `step_fn` jitted for `mesh`.

  The state enters and leaves in `state_shardings` and is donated (its buffers are reused
  for the new state: do not touch the old one after the call); the batch takes
  `batch_shardings` (a sharding or a tree of them); metrics come back replicated. Tracing
  happens under the mesh and the logical rules, so the model's activation constraints
  apply. The SFT step (`make_train_step`) and the RL update (m1jax.rl.step) both use it.
  """
  jitted = jax.jit(step_fn, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=0)

  def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    with sharding.use_mesh(mesh):
      return jitted(state, batch)

  step.jitted = jitted  # for .lower(...) (ahead-of-time compiles, memory analysis)
  return step


def make_train_step(model, tx, mesh: Mesh, state_shardings: TrainState, *, accum_steps: int,
                    aux_coef: float, loss_chunk_tokens: int = DEFAULT_CHUNK):
  """`step(state, batch) -> (state, metrics)`: train_step jitted for `mesh` by `jit_step`
  (state donated and kept in `state_shardings`, the batch split over the batch axes)."""
  step_fn = functools.partial(train_step, model=model, tx=tx, accum_steps=accum_steps,
                              loss_chunk_tokens=loss_chunk_tokens,
                              aux_coef=aux_coef)
  return jit_step(step_fn, mesh, state_shardings, batch_sharding(mesh))


@functools.partial(jax.jit, static_argnames=("model", "loss_chunk_tokens"))
def eval_step(params, batch: dict, *, model, loss_chunk_tokens: int = DEFAULT_CHUNK) -> dict:
  """Summed CE and target count of a packed batch (held-out loss = sum / count)."""
  ce_sum, count, aux = _forward(model, params, batch, loss_chunk_tokens)
  return {"ce_sum": ce_sum, "count": count, "aux_loss": aux}


@functools.partial(jax.jit, static_argnames=("model",))
def predict_step(params, tokens_BT, *, model):
  """Greedy next-token predictions [B,T] int32 (teacher forcing, one document per row)."""
  return jnp.argmax(model.apply({"params": params}, tokens_BT).logits, axis=-1).astype(jnp.int32)
