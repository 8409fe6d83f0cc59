"""Group-relative advantages (GRPO, DAPO and CISPO all use them) and dynamic sampling.

Rewards come as [P, G]: P prompts, G sampled completions each. numpy: this runs on the host
between generation and the update, on a few hundred numbers.
"""
import numpy as np


def group_advantages(rewards_PG, *, std_normalize: bool = True, ddof: int = 1,
                     eps: float = 1e-6) -> np.ndarray:
  """(R - mean_group(R)) / (std_group(R) + eps), [P, G] float32.

  ddof=1 (Bessel) matches TRL, verl and Tunix; numpy's default ddof=0 would scale every
  advantage by sqrt(G/(G-1)). A group whose rewards are all equal carries no signal: its
  advantages are exactly 0 (not 0/eps noise). std_normalize=False is Dr. GRPO's R - mean.
  """
  r = np.asarray(rewards_PG, np.float64)
  if r.ndim != 2 or r.shape[1] < 2:
    raise ValueError(f"group_advantages: rewards must be [P, G] with G >= 2 (a group "
                     f"needs a baseline); got shape {r.shape}")
  centered = r - r.mean(axis=1, keepdims=True)
  if std_normalize:
    centered = centered / (r.std(axis=1, ddof=ddof, keepdims=True) + eps)
  centered[np.ptp(r, axis=1) == 0] = 0.0
  return centered.astype(np.float32)


def dynamic_sampling_keep(rewards_PG) -> np.ndarray:
  """[P] bool: DAPO's dynamic sampling keeps a prompt's whole group only when its rewards
  differ (std > 0); all-right or all-wrong groups would contribute zero advantage and only
  dilute the token normaliser."""
  r = np.asarray(rewards_PG)
  return np.ptp(r, axis=1) > 0
