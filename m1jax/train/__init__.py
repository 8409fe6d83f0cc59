"""The trainer: optax AdamW, grain data with packing, Orbax checkpoints, metrics, eval.

`train_and_evaluate(config, workdir)` is the whole run; experiments/train.py is its flags.
"""
from m1jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
