"""`config.rl` -> RLSettings: presets filled in, every value checked, frozen and hashable
(it is a static argument of the jitted update, so equal settings share one compile).

Presets (the loop is the same for all three; only these keys differ):

  preset  policy_loss  loss_agg_mode         eps low/high  IS cap  dual clip  dyn. sampling
  grpo    ppo_clip     seq-mean-token-mean   0.2 / 0.2     -       off        off
  dapo    ppo_clip     token-mean            0.2 / 0.28    -       10         on
  cispo   cispo        token-mean            0.2 / 0.28    0.28    off        on

A key set in the config (not None) wins over its preset value.
"""
import dataclasses
from typing import Optional

from m1jax.rl.losses import AGG_MODES, get_policy_loss

PRESETS = {
    "grpo": dict(policy_loss="ppo_clip", loss_agg_mode="seq-mean-token-mean",
                 epsilon_low=0.2, epsilon_high=0.2, is_epsilon_high=0.28, dual_clip_c=0.0,
                 dynamic_sampling=False),
    "dapo": dict(policy_loss="ppo_clip", loss_agg_mode="token-mean", epsilon_low=0.2,
                 epsilon_high=0.28, is_epsilon_high=0.28, dual_clip_c=10.0,
                 dynamic_sampling=True),
    "cispo": dict(policy_loss="cispo", loss_agg_mode="token-mean", epsilon_low=0.2,
                  epsilon_high=0.28, is_epsilon_high=0.28, dual_clip_c=0.0,
                  dynamic_sampling=True),
}
TRUNCATED_POLICIES = ("grade", "mask", "zero_adv")
OLD_LOGPROBS = ("sampler", "trainer")


@dataclasses.dataclass(frozen=True)
class RLSettings:
  """The resolved rl section; field meanings are documented in configs/common.py
  rl_config()."""
  algorithm: str
  policy_loss: str
  loss_agg_mode: str
  epsilon_low: float
  epsilon_high: float
  is_epsilon_high: float
  is_epsilon_low: Optional[float]
  unified_mask: bool
  dual_clip_c: Optional[float]   # None = off (0 in the config)
  dynamic_sampling: bool
  kl_coef: float
  num_generations: int
  prompts_per_step: int
  num_minibatches: int
  num_epochs: int
  micro_batches: int
  max_new_tokens: int
  seq_len: int
  temperature: float
  top_p: float
  top_k: int
  allow_truncated_sampling: bool
  early_stop_tokens: Optional[int]
  early_stop_prob: float
  truncated_policy: str
  overlong_buffer: int
  overlong_penalty: float
  std_normalize: bool
  std_ddof: int
  adv_eps: float
  old_logprobs: str
  mismatch_check_every: int
  init_checkpoint: str
  num_steps: int
  learning_rate: float
  warmup_steps: int
  weight_decay: float
  grad_clip_norm: float
  seed: int
  prompt_offset: int
  prompt_file: str
  eval_every: int
  eval_examples: int
  eval_samples: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  tensorboard: bool
  plot: bool

  @property
  def rows(self) -> int:
    """Rollouts per generation batch."""
    return self.prompts_per_step * self.num_generations

  @property
  def minibatch_rows(self) -> int:
    return self.rows // self.num_minibatches

  @property
  def mu(self) -> int:
    """Optimizer updates per generation batch."""
    return self.num_minibatches * self.num_epochs


def resolve(rl) -> RLSettings:
  """RLSettings from a `config.rl` ConfigDict (or dict). Raises ValueError naming the key
  for an unknown preset or loss, and for every value that defines no valid run."""
  values = dict(rl.to_dict() if hasattr(rl, "to_dict") else rl)
  algorithm = values.get("algorithm")
  if algorithm not in PRESETS:
    raise ValueError(f"rl.algorithm={algorithm!r}: unknown preset; expected one of "
                     f"{sorted(PRESETS)}")
  for key, preset_value in PRESETS[algorithm].items():
    if values.get(key) is None:
      values[key] = preset_value
  names = {f.name for f in dataclasses.fields(RLSettings)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ValueError(f"rl: unknown keys {unknown}; valid: {sorted(names)}")
  missing = sorted(names - set(values))
  if missing:
    raise ValueError(f"rl: missing keys {missing} (start from configs/common.py rl_config())")
  if not values["dual_clip_c"]:
    values["dual_clip_c"] = None
  settings = RLSettings(**values)
  _validate(settings)
  return settings


def _validate(s: RLSettings) -> None:
  get_policy_loss(s.policy_loss)  # unknown names raise, listing the registry
  if s.loss_agg_mode not in AGG_MODES:
    raise ValueError(f"rl.loss_agg_mode={s.loss_agg_mode!r}; expected one of {AGG_MODES}")
  if not s.is_epsilon_high > 0:
    raise ValueError(f"rl.is_epsilon_high={s.is_epsilon_high!r} must be > 0: the weight cap "
                     "is 1 + is_epsilon_high (offset convention), and a cap <= 1 would "
                     "shrink even on-policy tokens")
  if s.is_epsilon_low is not None and not 0 < s.is_epsilon_low <= 1:
    raise ValueError(f"rl.is_epsilon_low={s.is_epsilon_low!r} must be None or in (0, 1]")
  if not (0 <= s.epsilon_low < 1 and s.epsilon_high >= 0):
    raise ValueError(f"rl.epsilon_low/high = {s.epsilon_low}/{s.epsilon_high}: need "
                     "0 <= epsilon_low < 1 and epsilon_high >= 0")
  if s.dual_clip_c is not None and not s.dual_clip_c > 1:
    raise ValueError(f"rl.dual_clip_c={s.dual_clip_c!r} must be > 1 (or 0 = off)")
  if s.num_generations < 2:
    raise ValueError(f"rl.num_generations={s.num_generations}: group-relative advantages "
                     "need G >= 2 completions per prompt")
  for key in ("prompts_per_step", "num_minibatches", "num_epochs", "micro_batches",
              "max_new_tokens", "seq_len", "num_steps", "eval_every", "log_every",
              "checkpoint_every", "keep_checkpoints"):
    value = getattr(s, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < (
        0 if key == "num_steps" else 1):
      raise ValueError(f"rl.{key}={value!r} must be a positive int")
  if s.rows % s.num_minibatches:
    raise ValueError(f"rl: prompts_per_step * num_generations = {s.rows} rows do not split "
                     f"into num_minibatches={s.num_minibatches} equal minibatches")
  if s.minibatch_rows % s.micro_batches:
    raise ValueError(f"rl.micro_batches={s.micro_batches} does not divide the "
                     f"{s.minibatch_rows} rows of a minibatch")
  if not s.temperature > 0:
    raise ValueError(f"rl.temperature={s.temperature!r} must be > 0: RL samples, and the "
                     "trainer divides its logits by it")
  if (s.top_p != 1.0 or s.top_k != 0) and not s.allow_truncated_sampling:
    raise ValueError(f"rl.top_p={s.top_p}, rl.top_k={s.top_k}: truncated sampling draws "
                     "from a distribution other than the one whose log-probs the loss uses, "
                     "which biases the importance ratio. Use top_p=1, top_k=0, or set "
                     "rl.allow_truncated_sampling=True")
  if s.early_stop_tokens is not None and s.early_stop_tokens < 1:
    raise ValueError(f"rl.early_stop_tokens={s.early_stop_tokens!r}: None or >= 1")
  if s.truncated_policy not in TRUNCATED_POLICIES:
    raise ValueError(f"rl.truncated_policy={s.truncated_policy!r}; expected one of "
                     f"{TRUNCATED_POLICIES}")
  if s.old_logprobs not in OLD_LOGPROBS:
    raise ValueError(f"rl.old_logprobs={s.old_logprobs!r}; expected one of {OLD_LOGPROBS}")
  if not 0 <= s.overlong_buffer <= s.max_new_tokens:
    raise ValueError(f"rl.overlong_buffer={s.overlong_buffer} must be in [0, "
                     f"max_new_tokens={s.max_new_tokens}]")
  if s.kl_coef < 0:
    raise ValueError(f"rl.kl_coef={s.kl_coef} must be >= 0")
  if s.eval_samples < 1 or s.eval_examples < 0:
    raise ValueError("rl.eval_samples must be >= 1 and rl.eval_examples >= 0")
