"""A PNG of an RL run: reward, held-out accuracy, clip fractions and response length."""
import os

from m1jax.train.metrics import read_metrics
from m1jax.train.plot import pyplot, series


def plot_rl(workdir: str, path: str | None = None) -> str:
  plt = pyplot()
  records = read_metrics(workdir)
  path = path or os.path.join(workdir, "rl_curves.png")

  fig, axes = plt.subplots(1, 4, figsize=(18, 4))
  panels = (
      ("rollout reward", [("train/reward/mean", "reward (T=1, on-policy)")], None),
      ("held-out accuracy", [("eval/pass@1_T1", "sampled avg@k, T=1"),
                             ("eval/greedy_graded", "greedy, graded"),
                             ("eval/greedy_exact", "greedy, exact trace")], (-0.02, 1.02)),
      ("clip fractions", [("train/clip_ratio/high_mean", "PPO high clip (r>1+eps, A>0)"),
                          ("train/clip_ratio/low_mean", "PPO low clip"),
                          ("train/cispo/clip_frac", "CISPO weight capped")], None),
      ("response length (tokens)", [("train/response_length/mean", "mean"),
                                    ("train/response_length/max", "max")], None))
  for ax, (title, keys, ylim) in zip(axes, panels):
    for key, label in keys:
      x, y = series(records, key)
      if x:
        ax.plot(x, y, label=label, marker="o" if key.startswith("eval") else None)
    ax.set_title(title)
    ax.set_xlabel("rollout step")
    if ylim:
      ax.set_ylim(*ylim)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
