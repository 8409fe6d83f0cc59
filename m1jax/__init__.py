"""m1jax: MiniMax-M1 in JAX/Flax.

Public names load on first use (PEP 562), so `import m1jax.config_overrides` (flag parsing,
`--help`) does not pay for importing jax and flax.
"""
import importlib

__version__ = "0.2.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ModelConfig": "m1jax.config",
    "lightning_slopes": "m1jax.config",
    "from_pretrained": "m1jax.hf",
    "save_pretrained": "m1jax.hf",
    "load_balancing_loss": "m1jax.losses",
    "next_token_loss": "m1jax.losses",
    "CausalLMOutput": "m1jax.model",
    "MiniMaxM1ForCausalLM": "m1jax.model",
    "init_params": "m1jax.model",
    "generate": "m1jax.inference",
}
_SUBMODULES = ("ops",)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


def __getattr__(name):
  if name in _EXPORTS:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"m1jax.{name}")
  else:
    raise AttributeError(f"module 'm1jax' has no attribute {name!r}")
  globals()[name] = value  # cache: later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
