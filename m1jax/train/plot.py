"""A PNG of the training loss, held-out loss and task accuracy curves; `pyplot` and `series`
are shared with the RL run's plot (m1jax/rl/plot.py)."""
import os

from m1jax.train.metrics import read_metrics


def pyplot():
  """matplotlib.pyplot on the Agg backend (no display on servers and CI); imported lazily
  so the trainer does not pay for matplotlib unless it plots."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def series(records: list[dict], key: str) -> tuple[list, list]:
  """(steps, values) of the metrics records (m1jax.train.metrics.read_metrics) holding key."""
  pts = [(r["step"], r[key]) for r in records if key in r]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(workdir: str, path: str | None = None) -> str:
  plt = pyplot()
  records = read_metrics(workdir)
  path = path or os.path.join(workdir, "curves.png")

  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label in (("train/loss", "train loss"), ("eval/loss", "held-out loss")):
    x, y = series(records, key)
    if x:
      ax_loss.plot(x, y, label=label, marker="o" if key.startswith("eval") else None)
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("loss")
  ax_loss.set_yscale("log")
  ax_loss.legend()
  for key, label in (("eval/accuracy", "exact match"), ("eval/graded_accuracy", "graded")):
    x, y = series(records, key)
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
