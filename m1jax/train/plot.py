"""A PNG of the training loss, held-out loss and task accuracy curves."""
import os

from m1jax.train.metrics import read_metrics


def plot_curves(workdir: str, path: str | None = None) -> str:
  import matplotlib
  matplotlib.use("Agg")  # no display on servers and CI
  import matplotlib.pyplot as plt

  records = read_metrics(workdir)
  path = path or os.path.join(workdir, "curves.png")

  def series(key):
    pts = [(r["step"], r[key]) for r in records if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label in (("train/loss", "train loss"), ("eval/loss", "held-out loss")):
    x, y = series(key)
    if x:
      ax_loss.plot(x, y, label=label, marker="o" if key.startswith("eval") else None)
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("loss")
  ax_loss.set_yscale("log")
  ax_loss.legend()
  for key, label in (("eval/accuracy", "exact match"), ("eval/graded_accuracy", "graded")):
    x, y = series(key)
    if x:
      ax_acc.plot(x, y, label=label, marker="o")
  ax_acc.set_xlabel("step")
  ax_acc.set_ylabel("task accuracy")
  ax_acc.set_ylim(-0.02, 1.02)
  ax_acc.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
