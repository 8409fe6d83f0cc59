"""m1jax: MiniMax-M1 in JAX/Flax."""
__version__ = "0.2.0"

from m1jax.config import ModelConfig, lightning_slopes
from m1jax.hf import from_pretrained, save_pretrained
from m1jax.losses import load_balancing_loss, next_token_loss
from m1jax.model import CausalLMOutput, MiniMaxM1ForCausalLM, init_params
from m1jax import ops
from m1jax.inference import generate

__all__ = [
    "CausalLMOutput", "MiniMaxM1ForCausalLM", "ModelConfig", "from_pretrained", "generate",
    "__version__", "init_params", "lightning_slopes", "load_balancing_loss", "next_token_loss", "ops",
    "save_pretrained",
]
