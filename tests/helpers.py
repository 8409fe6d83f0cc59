"""Shared test fixtures-as-functions: the one tiny ModelConfig factory, random params and ids,
the transformers reference model, the trainer micro config, and optional-import handling.

Tests import from here (and tests/assertions.py, tests/pallas_kernels/cases.py), never from
another test module: importing a test module runs its module-level code and, under
pytest-xdist, can collect its tests twice.
"""
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM

# ------------------------------------------------------------------ optional imports
# Values of CI that mean "not CI" (CI=0 / CI=false are used to turn CI behaviour off).
_CI_OFF = ("", "0", "false", "no")


def in_ci() -> bool:
  return os.environ.get("CI", "").strip().lower() not in _CI_OFF


def require(module_name: str):
  """Imports `module_name` for a test that needs it (torch, transformers, ...).

  Locally a missing module skips the test. Under CI (the CI environment variable set) it is
  an error: a CI image that lost torch would otherwise pass every parity test by skipping it.
  """
  try:
    return pytest.importorskip(module_name)
  except pytest.skip.Exception as e:
    if not in_ci():
      raise
    pytest.fail(f"CI is set but {module_name!r} cannot be imported ({e}); CI must run the "
                "tests that need it. Install it (scripts/setup.sh --test), or unset CI to "
                "skip them locally.", pytrace=False)


# ------------------------------------------------------------------ the tiny model
TINY_VOCAB = 97
# Both layer types, not periodic: the unrolled stack. (0, 0, 0, 1) * 2 is the scanned one.
TINY_ATTN_TYPES = (0, 1, 0)

# The tiny architecture every test starts from. hidden_size = H * head_dim here; tests that
# need M != H * D (as in the release) override it. Distinct DeepNorm alphas per sublayer so
# a swapped alpha changes the output; initializer_range 0.1 so random layers are not ~identity.
_TINY = dict(vocab_size=TINY_VOCAB, hidden_size=32, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, intermediate_size=48, num_local_experts=4,
             num_experts_per_tok=2, rotary_dim=4, rope_theta=10_000.0, block_size=8,
             initializer_range=0.1, layernorm_full_attention_alpha=1.5,
             layernorm_linear_attention_alpha=1.25, layernorm_mlp_alpha=1.75)


def tiny_config(attn_types: Sequence[int] = TINY_ATTN_TYPES, **changes) -> ModelConfig:
  """The tiny ModelConfig with one layer per entry of `attn_types`; `changes` override any
  field (num_hidden_layers / attn_type_list included, e.g. to build an invalid config)."""
  values = dict(_TINY, num_hidden_layers=len(attn_types), attn_type_list=tuple(attn_types))
  values.update(changes)
  return ModelConfig(**values)


def random_params(config: ModelConfig, seed: int):
  """Random params in the model's own structure and dtypes, without compiling `init`.

  Shapes come from `jax.eval_shape(model.init)`; values are numpy draws (norm scales around
  1, so a norm weight mapped to the wrong place cannot hide behind all-ones). Compiling the
  real init costs seconds per config on CPU; tests/test_model.py covers it once.
  """
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: MiniMaxM1ForCausalLM(config).init(jax.random.key(0),
                                                jnp.zeros((1, 4), jnp.int32)))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "scale":
      value = rng.uniform(0.5, 1.5, leaf.shape)
    else:
      value = rng.standard_normal(leaf.shape) * config.initializer_range
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def random_ids(seed: int, batch: int, seq: int, vocab_size: int = TINY_VOCAB) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab_size, size=(batch, seq)))


# ------------------------------------------------------------------ transformers reference
LINEAR, FULL = "linear_attention", "full_attention"


def hf_config(layer_types: Sequence[str], **changes):
  """transformers.MiniMaxConfig of the tiny architecture (in-tree `minimax` keys)."""
  transformers = require("transformers")
  values = dict(
      vocab_size=_TINY["vocab_size"], hidden_size=_TINY["hidden_size"],
      intermediate_size=_TINY["intermediate_size"], num_hidden_layers=len(layer_types),
      num_attention_heads=_TINY["num_attention_heads"],
      num_key_value_heads=_TINY["num_key_value_heads"], head_dim=_TINY["head_dim"],
      layer_types=list(layer_types), num_local_experts=_TINY["num_local_experts"],
      num_experts_per_tok=_TINY["num_experts_per_tok"], block_size=_TINY["block_size"],
      max_position_embeddings=512, initializer_range=_TINY["initializer_range"],
      # transformers' in-tree model rotates the whole head_dim (docs/MODEL.md §9); partial
      # rotary is tested against the formula in tests/layers/test_rope.py.
      rope_parameters={"rope_type": "default", "rope_theta": _TINY["rope_theta"],
                       "partial_rotary_factor": 1.0},
      # No pad token: HF zero-initialises the pad embedding row, which makes router logits
      # exactly tied, and torch.topk and lax.top_k break exact ties differently.
      bos_token_id=1, eos_token_id=2, pad_token_id=None, router_aux_loss_coef=0.01)
  values.update(changes)
  return transformers.MiniMaxConfig(**values)


def hf_model(layer_types: Sequence[str], *, seed: int = 0, perturb_norms: bool = True,
             **config_changes):
  """A random float32 transformers.MiniMaxForCausalLM in eval mode; save it with
  `.save_pretrained(dir)` and load it with m1jax.from_pretrained(dir).

  perturb_norms: every norm weight drawn from U(0.5, 1.5), so a norm mapped to the wrong
  place cannot hide behind all-ones.
  """
  torch = require("torch")
  transformers = require("transformers")
  config = hf_config(layer_types, **config_changes)
  torch.manual_seed(seed)
  model = transformers.MiniMaxForCausalLM(config).eval().float()
  if perturb_norms:
    with torch.no_grad():
      for name, p in model.named_parameters():
        if "norm" in name:
          p.uniform_(0.5, 1.5)
  return model


# ------------------------------------------------------------------ the trainer micro config
# Architecture fields the trainer micro config takes from the tiny model. Not vocab_size
# (the task's byte tokenizer needs configs/tiny.py's 512), nor the DeepNorm alphas, init
# scale and dtypes (the training recipe of configs/tiny.py).
_MICRO_FROM_TINY = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                    "intermediate_size", "num_local_experts", "num_experts_per_tok",
                    "rotary_dim", "rope_theta", "block_size")


def micro_train_config(**train):
  """configs/tiny.py's trainer ConfigDict shrunk so a test compiles and runs it in seconds on
  CPU: a 2-layer (lightning, softmax) tiny model; `train` overrides config.train fields."""
  from configs import tiny  # the trainer config module; only these tests need it
  config = tiny.get_config()
  m = config.model
  for key in _MICRO_FROM_TINY:
    m[key] = _TINY[key]
  m.num_hidden_layers = 2
  m.attn_type_list = (0, 1)
  t = config.train
  # 8 rows: the trainer's default mesh puts every device on fsdp (8 fake CPU devices here).
  t.num_steps, t.batch_size, t.seq_len = 6, 8, 48
  t.log_every, t.eval_every, t.checkpoint_every = 2, 1000, 3
  # No eval unless a test asks: its compile would dominate these tests' time.
  t.eval_batches, t.eval_examples, t.eval_at_start = 0, 0, False
  t.async_checkpointing, t.tensorboard, t.plot = True, False, False
  for key, value in train.items():
    t[key] = value
  config.optimizer.warmup_steps = 2
  return config
