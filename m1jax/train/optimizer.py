"""AdamW with warmup + cosine (or constant) LR, global-norm clipping, no decay on norms."""
import jax
import optax

SCHEDULES = ("cosine", "constant")


def learning_rate_schedule(opt_config, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine decay to `final_lr_fraction` of it at
  `num_steps`, or constant."""
  lr, warmup = opt_config.learning_rate, opt_config.warmup_steps
  if opt_config.schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule={opt_config.schedule!r}; expected one of {SCHEDULES}")
  if opt_config.schedule == "constant":
    after = optax.constant_schedule(lr)
  else:
    after = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1),
                                        alpha=opt_config.final_lr_fraction)
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def decay_mask(params):
  """True for parameters that get weight decay: every leaf except norm scales.

  Decided by name, not rank: under the scanned stack a norm scale is [L/p, M], rank 2.
  """
  def decays(path, _):
    return not any("norm" in str(getattr(key, "key", key)) for key in path)
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(opt_config, num_steps: int) -> tuple[optax.GradientTransformation,
                                                          optax.Schedule]:
  """(tx, schedule)."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  parts = []
  if opt_config.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  parts.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps,
                           weight_decay=opt_config.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
