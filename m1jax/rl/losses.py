"""Per-token policy losses (a registry) and the aggregation weights that turn them into a
scalar.

A policy loss is `fn(inputs: PolicyLossInputs, cfg) -> (loss_BT, metric_sums)`: a pure
function of per-token arrays (the model forward happens outside, so it is testable without a
model and cheap to jit). `loss_BT` is the per-token loss (padding included; the aggregation
weights are 0 there); `metric_sums` are masked SUMS plus their token counts, so metrics stay
exact when a minibatch is split into microbatches (divide at the end).

Aggregation is separate (`loss_weights`): the weights are computed once per minibatch,
before the microbatch scan, so splitting a minibatch into microbatches cannot change the
normaliser (the accumulation bugs of other RL trainers came from normalising per
microbatch). The scalar loss is sum(weights_BT * loss_BT).

`cfg` is any object with the attributes a loss reads (m1jax.rl.config.RLSettings, or a
ConfigDict in tests): epsilon_low/epsilon_high/dual_clip_c (ppo_clip, gspo),
is_epsilon_high/is_epsilon_low/unified_mask (cispo). Ratios use the offset convention: the
cap is 1 + epsilon, never an absolute epsilon.
"""
from typing import Callable

import flax
import jax
import jax.numpy as jnp

# Log-ratios are clamped before exp: a token whose log-prob moved by > 20 nats has a weight
# that is clipped anyway, and exp would overflow in the metrics.
_LOG_RATIO_CLAMP = 20.0
# Tokens the sampler gave probability below this are reported separately: low-probability
# "fork" tokens are the ones PPO's clip drops and CISPO keeps (M1 report §3.1).
LOW_PROB = 0.1


@flax.struct.dataclass
class PolicyLossInputs:
  logp_BT: jax.Array       # log pi_theta(o_t) at the sampling temperature; differentiable
  old_logp_BT: jax.Array   # log pi_old(o_t), frozen for the whole generation batch
  adv_BT: jax.Array        # advantage, broadcast over each row's tokens
  mask_BT: jax.Array       # float {0,1}: completion tokens (EOS included) that are trained


PolicyLossFn = Callable[[PolicyLossInputs, object], tuple[jax.Array, dict]]
_REGISTRY: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str):
  def register(fn):
    if name in _REGISTRY:
      raise ValueError(f"policy loss {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn
  return register


def policy_loss_names() -> list[str]:
  return sorted(_REGISTRY)


def get_policy_loss(name: str) -> PolicyLossFn:
  if name not in _REGISTRY:
    raise ValueError(f"unknown policy loss {name!r}; expected one of {policy_loss_names()}")
  return _REGISTRY[name]


def _log_ratio(x: PolicyLossInputs) -> jax.Array:
  return jnp.clip(x.logp_BT - x.old_logp_BT, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def _sums(x: PolicyLossInputs, **indicators) -> dict:
  """Masked sums of each indicator over all tokens and over low-pi_old tokens (`@lowp`),
  with the token counts they divide by ("tokens", "tokens@lowp")."""
  mask = x.mask_BT.astype(jnp.float32)
  low = mask * (jnp.exp(jax.lax.stop_gradient(x.old_logp_BT)) < LOW_PROB)
  out = {"tokens": jnp.sum(mask), "tokens@lowp": jnp.sum(low)}
  for name, value in indicators.items():
    value = jax.lax.stop_gradient(value.astype(jnp.float32))
    out[name] = jnp.sum(value * mask)
    out[f"{name}@lowp"] = jnp.sum(value * low)
  return out


def ppo_trust_region(r_BT, adv_BT, epsilon_low, epsilon_high):
  """(low_clipped, high_clipped) boolean [B,T]: the tokens PPO's clip removes from the
  gradient (A < 0 with r below 1 - eps_low; A > 0 with r above 1 + eps_high)."""
  low = (adv_BT < 0) & (r_BT < 1.0 - epsilon_low)
  high = (adv_BT > 0) & (r_BT > 1.0 + epsilon_high)
  return low, high


def _ppo_surrogate(r_BT, x, cfg):
  """PPO's clipped surrogate on ratio r (per token), with optional dual clip
  (A < 0: the loss is capped at -c*A, Ye et al. 2020)."""
  clipped = jnp.clip(r_BT, 1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)
  loss = jnp.maximum(-r_BT * x.adv_BT, -clipped * x.adv_BT)
  dual = jnp.zeros_like(r_BT, bool)
  c = getattr(cfg, "dual_clip_c", None)
  if c is not None:
    dual = (x.adv_BT < 0) & (loss > -c * x.adv_BT)
    loss = jnp.where(x.adv_BT < 0, jnp.minimum(loss, -c * x.adv_BT), loss)
  return loss, dual


@register_policy_loss("ppo_clip")
def ppo_clip(x: PolicyLossInputs, cfg):
  """GRPO / DAPO: -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A); a clipped token has no
  gradient."""
  r = jnp.exp(_log_ratio(x))
  loss, dual = _ppo_surrogate(r, x, cfg)
  low, high = ppo_trust_region(r, x.adv_BT, cfg.epsilon_low, cfg.epsilon_high)
  return loss, _sums(x, **{"clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
                           "clip_ratio/region_mean": low | high, "clip_ratio/dual_mean": dual})


@register_policy_loss("cispo")
def cispo(x: PolicyLossInputs, cfg):
  """CISPO (M1 report Eq. 4-5): -sg(min(r, 1+eps_IS_high)) * A * log pi. Every token keeps
  a gradient; only its importance weight is capped. No lower bound unless is_epsilon_low is
  set. `unified_mask` multiplies by the Eq. 6-7 mask (PPO's trust region with
  epsilon_low/epsilon_high), which turns it back into PPO on the clipped tokens; off by
  default, as in the report's runs."""
  r = jnp.exp(_log_ratio(x))
  w = jnp.minimum(r, 1.0 + cfg.is_epsilon_high)
  if getattr(cfg, "is_epsilon_low", None) is not None:
    w = jnp.maximum(w, 1.0 - cfg.is_epsilon_low)
  low, high = ppo_trust_region(r, x.adv_BT, cfg.epsilon_low, cfg.epsilon_high)
  if getattr(cfg, "unified_mask", False):
    w = w * ~(low | high)
  # The stop-gradient is the algorithm: without it the gradient of -min(r,c)*A*log pi has
  # a factor (1 + log pi), negative for pi < 1/e, reversing the update on fork tokens.
  w = jax.lax.stop_gradient(w)
  capped = r > 1.0 + cfg.is_epsilon_high
  return -w * x.adv_BT * x.logp_BT, _sums(
      x, **{"cispo/clip_frac": capped, "cispo/clip_frac_pos": capped & (x.adv_BT > 0),
            # What PPO with the same eps would have dropped (diagnostic only).
            "clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
            "clip_ratio/region_mean": low | high})


@register_policy_loss("reinforce")
def reinforce(x: PolicyLossInputs, cfg):
  """IS-corrected REINFORCE (M1 report Eq. 3): -sg(r) * A * log pi, no cap."""
  del cfg
  r = jnp.exp(_log_ratio(x))
  return -jax.lax.stop_gradient(r) * x.adv_BT * x.logp_BT, _sums(x)


@register_policy_loss("gspo")
def gspo(x: PolicyLossInputs, cfg):
  """GSPO-token (Zheng et al. 2025): PPO's clip on s_it = sg(s_i) * pi/sg(pi), where s_i is
  the geometric mean of row i's token ratios. Rows are whole within a microbatch, so the
  per-row mean is exact here."""
  mask = x.mask_BT.astype(jnp.float32)
  log_r = _log_ratio(x)
  seq_log_r_B1 = (jnp.sum(log_r * mask, axis=1, keepdims=True)
                  / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0))
  s = jnp.exp(jax.lax.stop_gradient(seq_log_r_B1) + x.logp_BT
              - jax.lax.stop_gradient(x.logp_BT))
  loss, dual = _ppo_surrogate(s, x, cfg)
  low, high = ppo_trust_region(s, x.adv_BT, cfg.epsilon_low, cfg.epsilon_high)
  return loss, _sums(x, **{"clip_ratio/low_mean": low, "clip_ratio/high_mean": high,
                           "clip_ratio/region_mean": low | high, "clip_ratio/dual_mean": dual})


# ------------------------------------------------------------------ aggregation
AGG_MODES = ("token-mean", "seq-mean-token-mean", "group-token-mean")


def loss_weights(mask_BT: jax.Array, mode: str, group_B: jax.Array | None = None) -> jax.Array:
  """Per-token weights [B,T] of a whole minibatch; the scalar loss is sum(w * loss_BT).

  token-mean: 1/sum|o| over the minibatch (DAPO, CISPO as verl/TRL run it).
  seq-mean-token-mean: 1/(n_rows * |o_i|) (GRPO).
  group-token-mean: 1/(n_groups * sum_{i in group}|o_i|), the M1 report's Eq. 4 read
    literally (one normaliser per prompt's group); needs group_B (int group id per row).
  Rows and groups without trained tokens count for nothing.
  """
  mask = mask_BT.astype(jnp.float32)
  if mode == "token-mean":
    return mask / jnp.maximum(jnp.sum(mask), 1.0)
  row_tokens_B = jnp.sum(mask, axis=1)
  if mode == "seq-mean-token-mean":
    n_rows = jnp.sum(row_tokens_B > 0)
    per_row_B = jnp.where(row_tokens_B > 0, 1.0 / jnp.maximum(row_tokens_B * n_rows, 1.0), 0.0)
    return mask * per_row_B[:, None]
  if mode == "group-token-mean":
    if group_B is None:
      raise ValueError("loss_weights: group-token-mean needs group ids per row")
    same_BB = group_B[:, None] == group_B[None, :]
    group_tokens_B = same_BB.astype(jnp.float32) @ row_tokens_B
    # Each group's rows share 1/n_groups: count a group once via its first row with tokens.
    has_B = row_tokens_B > 0
    earlier_BB = same_BB & has_B[None, :] & (jnp.arange(group_B.shape[0])[None, :]
                                             < jnp.arange(group_B.shape[0])[:, None])
    first_B = has_B & ~jnp.any(earlier_BB, axis=1)
    n_groups = jnp.sum(first_B)
    per_row_B = jnp.where(has_B, 1.0 / jnp.maximum(group_tokens_B * n_groups, 1.0), 0.0)
    return mask * per_row_B[:, None]
  raise ValueError(f"unknown loss_agg_mode {mode!r}; expected one of {AGG_MODES}")
