"""Sequence parallelism in the model: the packed rows (documents starting on and next to
shard edges) that tests/train/test_mesh_combinations.py trains on every mesh with, and the
error for a length the `sequence` axis does not divide."""
import jax
import numpy as np
import pytest

from m1jax import MiniMaxM1ForCausalLM, sharding
from tests.helpers import random_params, tiny_config
from tests.train.test_sharded_train import MICRO

# Document lengths per row of 16 tokens (shard edges at 4, 8, 12): starts at a shard's first
# token, at its last (7, 11), a one-token document, a row that is one document.
DOCS = ([8, 8], [3, 1, 12], [7, 9], [16], [4, 4, 4, 4], [5, 6, 5], [11, 5], [1, 15])


def _packed_batch(seed=0):
  rng = np.random.default_rng(seed)
  length = sum(DOCS[0])
  tokens = rng.integers(0, MICRO["vocab_size"], (len(DOCS), length)).astype(np.int32)
  segments = np.concatenate([np.repeat(np.arange(1, len(d) + 1), d)[None] for d in DOCS])
  positions = np.concatenate([np.concatenate([np.arange(n) for n in d])[None] for d in DOCS])
  return {"tokens": tokens, "positions": positions.astype(np.int32),
          "segment_ids": segments.astype(np.int32), "loss_mask": np.ones_like(tokens)}


def _spy(monkeypatch, module, name, calls):
  real = getattr(module, name)
  monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or real(*a, **k))


def _boxed(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 4), np.int32)))[
      "params"]


def test_length_not_divisible_by_sequence_names_both():
  model = MiniMaxM1ForCausalLM(tiny_config((0, 1), **MICRO))
  params = random_params(model.config, seed=0)
  tokens = np.zeros((2, 6), np.int32)
  with sharding.use_mesh(sharding.make_mesh("fsdp=2,sequence=4")):
    with pytest.raises(ValueError, match=r"sequence length T=6 .* not divisible by mesh axes "
                                         r"sequence = 4"):
      jax.jit(lambda p, t: model.apply({"params": p}, t))(params, tokens)
