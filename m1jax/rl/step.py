"""The RL update: one optimizer step on one minibatch of rollouts, the policy loss as a second
objective on the SFT trainer's machinery (m1jax/train/step.py): the same microbatch split and
scan (`microbatches`, `accumulate_gradients`), optimizer step (`apply_gradients`) and mesh
jit (`jit_step`: state donated and kept in its shardings, rows over the batch axes).

Aggregation weights are computed here, once per minibatch and before the microbatch scan,
so the gradient does not depend on `micro_batches` (tests/rl/test_step.py). Log-probs (and
the entropy metric) go through m1jax.chunked_loss: hidden / T through the LM head in chunks
of `loss_chunk_tokens` positions, never the [B,T,V] logits; 0 = the full-logits reference.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from m1jax import sharding
from m1jax.chunked_loss import DEFAULT_CHUNK, token_log_probs_and_entropy
from m1jax.layers import params as lp
from m1jax.rl.losses import PolicyLossInputs, get_policy_loss, loss_weights
from m1jax.train.state import TrainState
from m1jax.train.step import (accumulate_gradients, all_finite, apply_gradients, jit_step,
                              microbatches)

_LOG_RATIO_CLAMP = 20.0
# Arrays of a minibatch (m1jax.rl.rollout.minibatches without "rows", plus ref_logp_BT).
MINIBATCH_KEYS = ("tokens_BT", "token_mask_BT", "mask_BT", "old_logp_BT", "adv_B", "group_B",
                  "ref_logp_BT")


def token_logprobs(model, params, tokens_BT, token_mask_BT, temperature: float,
                   with_entropy: bool = False, loss_chunk_tokens: int = DEFAULT_CHUNK):
  """log pi(tokens[:, t+1] | tokens[:, :t+1]) at temperature T, [B, T-1] float32 (and the
  entropy of each predicted distribution). The logits are divided by T exactly as the
  sampler does (m1jax/inference/sampling.py), never the log-probs.

  loss_chunk_tokens > 0: the head runs on hidden / T (= logits / T: the head is linear) in
  chunks, in float32 when the model's lm_head_fp32 is set; 0: the full logits (reference).
  """
  if not loss_chunk_tokens:
    logits = model.apply({"params": params}, tokens_BT, token_mask_BT=token_mask_BT).logits
    logits = logits[:, :-1].astype(jnp.float32) / jnp.float32(temperature)
    logp_BTV = jax.nn.log_softmax(logits, axis=-1)
    logp_BT = jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    if not with_entropy:
      return logp_BT
    return logp_BT, -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)
  hidden_BTM = model.apply({"params": params}, tokens_BT, token_mask_BT=token_mask_BT,
                           return_hidden=True).hidden[:, :-1]
  if temperature != 1.0:
    # float32 first, so a bf16 body's hidden is not rounded again by the division.
    hidden_BTM = hidden_BTM.astype(jnp.float32) / jnp.float32(temperature)
  logp_BT, entropy_BT = token_log_probs_and_entropy(
      hidden_BTM, params["lm_head"], tokens_BT[:, 1:], model.config,
      chunk_tokens=loss_chunk_tokens)
  return (logp_BT, entropy_BT) if with_entropy else logp_BT


@functools.partial(jax.jit, static_argnames=("model", "temperature", "loss_chunk_tokens"))
def trainer_logprobs(params, tokens_BT, token_mask_BT, *, model, temperature: float,
                     loss_chunk_tokens: int = DEFAULT_CHUNK):
  """The trainer's forward for pi_old recomputation and the train/infer mismatch check."""
  return token_logprobs(model, params, tokens_BT, token_mask_BT, temperature,
                        loss_chunk_tokens=loss_chunk_tokens)


def _masked_extremes(value_BT, mask_BT):
  m = mask_BT > 0
  return (jnp.max(jnp.where(m, value_BT, -jnp.inf)), jnp.min(jnp.where(m, value_BT, jnp.inf)))


def _rows_constrained(mb: dict) -> dict:
  """Each array's rows over the batch axes (its other dims unsplit: T-1 targets need not
  divide a sequence axis)."""
  return {k: lp.constrain(v, (lp.BATCH,) + (None,) * (v.ndim - 1)) for k, v in mb.items()}


def _objective(params, mb, *, model, settings, loss_chunk_tokens):
  """sum(w * loss) over one microbatch (mb["weights_BT"]: the minibatch's aggregation
  weights), and (that loss, metric sums, ratio max, ratio min)."""
  mb = _rows_constrained(mb)
  logp_BT, entropy_BT = token_logprobs(model, params, mb["tokens_BT"], mb["token_mask_BT"],
                                       settings.temperature, with_entropy=True,
                                       loss_chunk_tokens=loss_chunk_tokens)
  mask_BT = mb["mask_BT"]
  adv_BT = jnp.broadcast_to(mb["adv_B"][:, None], logp_BT.shape)
  inputs = PolicyLossInputs(logp_BT=logp_BT, old_logp_BT=mb["old_logp_BT"], adv_BT=adv_BT,
                            mask_BT=mask_BT)
  loss_BT, sums = get_policy_loss(settings.policy_loss)(inputs, settings)
  log_r = jax.lax.stop_gradient(jnp.clip(logp_BT - mb["old_logp_BT"], -_LOG_RATIO_CLAMP,
                                         _LOG_RATIO_CLAMP))
  if settings.kl_coef > 0:
    # k3 estimator of KL(pi_theta || pi_ref) (GRPO), differentiable through logp.
    d = jnp.clip(mb["ref_logp_BT"] - logp_BT, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    kl_BT = jnp.exp(d) - d - 1.0
    loss_BT = loss_BT + settings.kl_coef * kl_BT
    sums["kl_ref"] = jnp.sum(jax.lax.stop_gradient(kl_BT) * mask_BT)
  loss = jnp.sum(mb["weights_BT"] * loss_BT)
  r = jnp.exp(log_r)
  sums.update({
      "entropy": jnp.sum(jax.lax.stop_gradient(entropy_BT) * mask_BT),
      "is_ratio/mean": jnp.sum(r * mask_BT),
      # mean(log pi_old - log pi), the "ppo_kl" of verl; k3 of pi_old vs pi.
      "ppo_kl": jnp.sum(-log_r * mask_BT),
      "k3_kl_old": jnp.sum((jnp.exp(-log_r) + log_r - 1.0) * mask_BT)})
  r_max, r_min = _masked_extremes(r, mask_BT)
  return loss, (jax.lax.stop_gradient(loss), sums, r_max, r_min)


def _combine(a, b):
  """Folds two microbatches' (loss, sums, ratio max, ratio min)."""
  return (a[0] + b[0], jax.tree.map(jnp.add, a[1], b[1]), jnp.maximum(a[2], b[2]),
          jnp.minimum(a[3], b[3]))


def _check_keys(mb: dict) -> None:
  if set(mb) != set(MINIBATCH_KEYS):
    raise ValueError(f"RL minibatch keys {sorted(mb)}; expected {sorted(MINIBATCH_KEYS)}")


def accumulate_grads(params, mb: dict, *, model, settings,
                     loss_chunk_tokens: int = DEFAULT_CHUNK):
  """(grads, loss, metric sums, ratio max, ratio min) of one minibatch, microbatched. The
  aggregation weights are computed over the whole minibatch first, so the result does not
  depend on settings.micro_batches."""
  _check_keys(mb)
  mb = {**mb, "weights_BT": loss_weights(mb["mask_BT"], settings.loss_agg_mode, mb["group_B"])}
  micro = microbatches(mb, settings.micro_batches)
  objective = functools.partial(_objective, model=model, settings=settings,
                                loss_chunk_tokens=loss_chunk_tokens)
  first = jax.tree.map(lambda x: x[0], micro)
  sums0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                       jax.eval_shape(lambda: objective(params, first)[1][1]))
  aux0 = (jnp.float32(0), sums0, jnp.float32(-jnp.inf), jnp.float32(jnp.inf))
  grads, (loss, sums, r_max, r_min) = accumulate_gradients(params, micro, objective, aux0,
                                                           _combine)
  return grads, loss, sums, r_max, r_min


def rl_train_step(state: TrainState, mb: dict, *, model, tx, settings,
                  loss_chunk_tokens: int = DEFAULT_CHUNK) -> tuple[TrainState, dict]:
  """One optimizer step on minibatch `mb` (MINIBATCH_KEYS; ref_logp_BT is the reference
  policy's log-probs for the KL term, ignored when settings.kl_coef == 0: pass zeros). Not
  jitted: `make_rl_step` jits it for a mesh. Metrics come back divided by their counts."""
  grads, loss, sums, r_max, r_min = accumulate_grads(state.params, mb, model=model,
                                                     settings=settings,
                                                     loss_chunk_tokens=loss_chunk_tokens)
  state, grads = apply_gradients(state, grads, tx)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "is_ratio/max": r_max,
             "is_ratio/min": r_min, "tokens": sums["tokens"],
             "params_finite": all_finite(state.params)}
  tokens, low = jnp.maximum(sums["tokens"], 1.0), jnp.maximum(sums["tokens@lowp"], 1.0)
  for name, value in sums.items():
    if not name.startswith("tokens"):
      metrics[name] = value / (low if name.endswith("@lowp") else tokens)
  metrics["tokens@lowp"] = sums["tokens@lowp"]
  return state, metrics


def minibatch_shardings(mesh: Mesh) -> dict:
  """Where each minibatch array lives: rows over the mesh's batch axes."""
  rows = lambda ndim: sharding.activation_sharding(mesh, (lp.BATCH,) + (None,) * (ndim - 1))
  return {k: rows(1 if k.endswith("_B") else 2) for k in MINIBATCH_KEYS}


def check_minibatch(mesh: Mesh, settings) -> None:
  """Raises ValueError, naming the mesh, unless every microbatch's rows split over it."""
  rows = settings.minibatch_rows // settings.micro_batches
  spec = minibatch_shardings(mesh)["adv_B"].spec
  sharding.check_divisible((rows,), spec, mesh,
                           f"an RL microbatch (rl.prompts_per_step * rl.num_generations / "
                           f"rl.num_minibatches / rl.micro_batches = {rows} rows)", ("batch",))


def make_rl_step(model, tx, mesh: Mesh, state_shardings: TrainState, *, settings,
                 loss_chunk_tokens: int = DEFAULT_CHUNK):
  """`step(state, mb) -> (state, metrics)`: rl_train_step jitted for `mesh` by the trainer's
  `jit_step` (the state donated, in `state_shardings`; rows over the batch axes)."""
  check_minibatch(mesh, settings)
  step_fn = functools.partial(rl_train_step, model=model, tx=tx, settings=settings,
                              loss_chunk_tokens=loss_chunk_tokens)
  return jit_step(step_fn, mesh, state_shardings, minibatch_shardings(mesh))


# One device, no mesh, no donation: the unit tests' entry (a stand-in model without logical
# axes has no state shardings).
rl_update = jax.jit(rl_train_step,
                    static_argnames=("model", "tx", "settings", "loss_chunk_tokens"))

