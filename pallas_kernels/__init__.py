"""Pallas kernels. Each kernel is a file of `pallas_call`s plus a thin `*_ops.py` custom_vjp.

Importing this package is cheap: kernel modules import `jax.experimental.pallas` only when
first used through `m1jax.ops.lightning_attention(impl=...)`.
"""
