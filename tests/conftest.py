"""Test defaults: 8 fake CPU devices and loud rank promotion.

XLA reads XLA_FLAGS once, at backend start, so this must run before any test imports jax
and touches a device.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The TPU ahead-of-time compile tests load libtpu (no TPU attached). By default libtpu takes
# /tmp/libtpu_lockfile, so two pytest-xdist workers compiling at once fail; they share no
# device, so concurrent loads are safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402

# Silent broadcasting ([B,T] + [T] and the like) hides shape bugs; make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
  # tests/pallas_kernels: the race-detector fixtures fail a test in which no kernel was
  # checked, unless it is marked as running none.
  config.addinivalue_line(
      "markers", "no_kernel: the test interprets no Pallas kernel (skips the race-detector "
      "'ran at least once' check)")
