"""The jitted RL update: one optimizer step on one minibatch of rollouts, with the minibatch
split into microbatches by a lax.scan (as m1jax/train/step.py does for the LM loss).

The seam with the SFT trainer: the state is m1jax.train.step.TrainState and the optimizer
is m1jax.train.optimizer.make_optimizer (AdamW 0.9/0.95/1e-15); only the objective differs.
Aggregation weights are computed here, once per minibatch and before the scan, so the
gradient does not depend on `micro_batches` (tests/rl/test_step.py).
"""
import functools

import jax
import jax.numpy as jnp
import optax

from m1jax.rl.losses import PolicyLossInputs, get_policy_loss, loss_weights
from m1jax.train.state import TrainState

_LOG_RATIO_CLAMP = 20.0


def token_logprobs(model, params, tokens_BT, token_mask_BT, temperature: float,
                   with_entropy: bool = False):
  """log pi(tokens[:, t+1] | tokens[:, :t+1]) at temperature T, [B, T-1] float32 (and the
  entropy of each predicted distribution). The logits are divided by T exactly as the
  sampler does (m1jax/inference/sampling.py), never the log-probs."""
  logits = model.apply({"params": params}, tokens_BT, token_mask_BT=token_mask_BT).logits
  logits = logits[:, :-1].astype(jnp.float32) / jnp.float32(temperature)
  logp_BTV = jax.nn.log_softmax(logits, axis=-1)
  logp_BT = jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  if not with_entropy:
    return logp_BT
  entropy_BT = -jnp.sum(jnp.exp(logp_BTV) * logp_BTV, axis=-1)
  return logp_BT, entropy_BT


@functools.partial(jax.jit, static_argnames=("model", "temperature"))
def trainer_logprobs(params, tokens_BT, token_mask_BT, *, model, temperature: float):
  """The trainer's forward for pi_old recomputation and the train/infer mismatch check."""
  return token_logprobs(model, params, tokens_BT, token_mask_BT, temperature)


def _masked_extremes(value_BT, mask_BT):
  m = mask_BT > 0
  return (jnp.max(jnp.where(m, value_BT, -jnp.inf)), jnp.min(jnp.where(m, value_BT, jnp.inf)))


def _objective(params, mb, weights_BT, ref_logp_BT, *, model, settings):
  """sum(w * loss) over one microbatch, and its metric sums."""
  logp_BT, entropy_BT = token_logprobs(model, params, mb["tokens_BT"], mb["token_mask_BT"],
                                       settings.temperature, with_entropy=True)
  mask_BT = mb["mask_BT"]
  adv_BT = jnp.broadcast_to(mb["adv_B"][:, None], logp_BT.shape)
  inputs = PolicyLossInputs(logp_BT=logp_BT, old_logp_BT=mb["old_logp_BT"], adv_BT=adv_BT,
                            mask_BT=mask_BT)
  loss_BT, sums = get_policy_loss(settings.policy_loss)(inputs, settings)
  log_r = jax.lax.stop_gradient(jnp.clip(logp_BT - mb["old_logp_BT"], -_LOG_RATIO_CLAMP,
                                         _LOG_RATIO_CLAMP))
  if settings.kl_coef > 0:
    # k3 estimator of KL(pi_theta || pi_ref) (GRPO), differentiable through logp.
    d = jnp.clip(ref_logp_BT - logp_BT, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    kl_BT = jnp.exp(d) - d - 1.0
    loss_BT = loss_BT + settings.kl_coef * kl_BT
    sums["kl_ref"] = jnp.sum(jax.lax.stop_gradient(kl_BT) * mask_BT)
  loss = jnp.sum(weights_BT * loss_BT)
  r = jnp.exp(log_r)
  sums.update({
      "entropy": jnp.sum(jax.lax.stop_gradient(entropy_BT) * mask_BT),
      "is_ratio/mean": jnp.sum(r * mask_BT),
      # mean(log pi_old - log pi), the "ppo_kl" of verl; k3 of pi_old vs pi.
      "ppo_kl": jnp.sum(-log_r * mask_BT),
      "k3_kl_old": jnp.sum((jnp.exp(-log_r) + log_r - 1.0) * mask_BT)})
  r_max, r_min = _masked_extremes(r, mask_BT)
  return loss, (jax.lax.stop_gradient(loss), sums, r_max, r_min)


def accumulate_grads(params, mb: dict, ref_logp_BT, *, model, settings):
  """(grads, loss, metric sums, ratio max, ratio min) of one minibatch, microbatched. The
  aggregation weights are computed over the whole minibatch first, so the result does not
  depend on settings.micro_batches."""
  weights_BT = loss_weights(mb["mask_BT"], settings.loss_agg_mode, mb["group_B"])
  k = settings.micro_batches
  split = lambda x: x.reshape((k, -1) + x.shape[1:])
  micro = (jax.tree.map(split, mb), split(weights_BT), split(ref_logp_BT))
  objective = functools.partial(_objective, model=model, settings=settings)
  grad_fn = jax.grad(objective, has_aux=True)

  def accumulate(carry, xs):
    grads, loss, sums, r_max, r_min = carry
    g, (l, s, mx, mn) = grad_fn(params, *xs)
    return (jax.tree.map(jnp.add, grads, g), loss + l, jax.tree.map(jnp.add, sums, s),
            jnp.maximum(r_max, mx), jnp.minimum(r_min, mn)), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  first = jax.tree.map(lambda x: x[0], micro)
  sums0 = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                       jax.eval_shape(lambda: objective(params, *first)[1][1]))
  carry0 = (zeros, jnp.float32(0), sums0, jnp.float32(-jnp.inf), jnp.float32(jnp.inf))
  return jax.lax.scan(accumulate, carry0, micro)[0]


@functools.partial(jax.jit, static_argnames=("model", "tx", "settings"))
def rl_update(state: TrainState, mb: dict, ref_logp_BT, *, model, tx, settings
              ) -> tuple[TrainState, dict]:
  """One optimizer step on minibatch `mb` (arrays of m1jax.rl.rollout.minibatches, without
  "rows"). ref_logp_BT: the reference policy's log-probs for the KL term (ignored when
  settings.kl_coef == 0; pass zeros). Returns metrics already divided by their counts."""
  grads, loss, sums, r_max, r_min = accumulate_grads(state.params, mb, ref_logp_BT,
                                                     model=model, settings=settings)
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "is_ratio/max": r_max,
             "is_ratio/min": r_min, "tokens": sums["tokens"],
             "params_finite": jnp.all(jnp.asarray(
                 [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(params)]))}
  tokens, low = jnp.maximum(sums["tokens"], 1.0), jnp.maximum(sums["tokens@lowp"], 1.0)
  for name, value in sums.items():
    if not name.startswith("tokens"):
      metrics[name] = value / (low if name.endswith("@lowp") else tokens)
  metrics["tokens@lowp"] = sums["tokens@lowp"]
  return TrainState(state.step + 1, params, opt_state), metrics


def policy_loss_value(params, mb: dict, ref_logp_BT, *, model, settings):
  """The scalar loss of a whole minibatch (no update); for tests and logging."""
  weights_BT = loss_weights(mb["mask_BT"], settings.loss_agg_mode, mb["group_B"])
  return _objective(params, mb, weights_BT, ref_logp_BT, model=model, settings=settings)[0]
