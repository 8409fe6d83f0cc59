"""Pure-JAX reference operators and the `impl=` selector."""
from m1jax.ops.linear_attention import (IMPLEMENTATIONS, lightning_attention,
                                        lightning_decode_step)

__all__ = ["IMPLEMENTATIONS", "lightning_attention", "lightning_decode_step"]
