"""Test defaults: 8 fake CPU devices and loud rank promotion.

XLA reads XLA_FLAGS once, at backend start, so this must run before any test imports jax
and touches a device.
"""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The TPU ahead-of-time compile tests load libtpu (no TPU attached). By default libtpu takes
# /tmp/libtpu_lockfile, so two pytest-xdist workers compiling at once fail; they share no
# device, so concurrent loads are safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

# One persistent XLA compilation cache per test session, shared by the xdist workers and by
# the subprocesses tests start (CLI and multi-process runs inherit the environment): many
# tests compile the same tiny-model programs, and compiles dominate the suite's time. The
# directory is made cold by each session (a fresh clone's CI starts empty) and removed at
# the end by the process that made it; a JAX_COMPILATION_CACHE_DIR set by the caller is
# used as is and kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="m1jax-test-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

# Silent broadcasting ([B,T] + [T] and the like) hides shape bugs; make it an error.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_configure(config):
  # tests/pallas_kernels: the race-detector fixtures fail a test in which no kernel was
  # checked, unless it is marked as running none.
  config.addinivalue_line(
      "markers", "no_kernel: the test interprets no Pallas kernel (skips the race-detector "
      "'ran at least once' check)")


def pytest_unconfigure(config):
  # xdist workers inherit the directory; only the process that made it removes it.
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
