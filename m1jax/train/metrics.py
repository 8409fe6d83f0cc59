"""Metrics to <workdir>/metrics.jsonl, TensorBoard (<workdir>/tensorboard) and the console."""
import json
import math
import os
import sys
import time


class MetricsWriter:
  """One record per call: a JSON line, TensorBoard scalars, and (optionally) a console line."""

  def __init__(self, workdir: str, enable_tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    self._tb = None
    if enable_tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict, *, console: bool = False, prefix: str = "") -> None:
    record = {"step": int(step), "time": time.time(),
              **{f"{prefix}{k}": float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for key, value in metrics.items():
        if math.isfinite(float(value)):
          self._tb.add_scalar(f"{prefix}{key}", float(value), int(step))
    if console:
      parts = " ".join(f"{prefix}{k}={_fmt(v)}" for k, v in metrics.items())
      print(f"[step {int(step):6d}] {parts}", file=sys.stdout, flush=True)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _fmt(value) -> str:
  value = float(value)
  if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
    return f"{value:.3e}"
  return f"{value:.4g}"


def read_metrics(workdir: str) -> list[dict]:
  """Records of metrics.jsonl; for a step logged twice (a resumed run) the last one wins."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  by_key = {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by kill -9
        continue
      by_key[(record["step"], tuple(sorted(record)))] = record
  return sorted(by_key.values(), key=lambda r: r["step"])
