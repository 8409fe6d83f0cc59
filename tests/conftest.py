"""Test defaults: 8 fake CPU devices and loud rank promotion.

XLA reads XLA_FLAGS once, at backend start, so this must run before any test imports jax
and touches a device.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Silent broadcasting ([B,T] + [T] and the like) hides shape bugs; make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
