"""The lightning-attention operator and its `impl=` table (m1jax/ops/linear_attention.py).

Pallas kernels are listed in that table and imported only when first run, so importing
this package never loads Pallas.
"""
from m1jax.ops.linear_attention import (IMPLEMENTATIONS, lightning_attention,
                                        lightning_decode_step)

__all__ = ["IMPLEMENTATIONS", "lightning_attention", "lightning_decode_step"]
