"""The lightning_attention implementation table (m1jax/ops/linear_attention.py): fail-closed
"auto", explicit names that cannot run say why, and the choice is logged once per shape."""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.ops import IMPLEMENTATIONS, lightning_attention
from m1jax.ops import linear_attention as la


def _inputs(t=5, d=64, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((1, t, 2, d)) * 0.3, dtype)
  return q, q, q, jnp.asarray([0.1, 1.0], jnp.float32)


def test_table_lists_every_implementation_and_only_verified_status_enables_auto():
  assert set(IMPLEMENTATIONS) == set(la.TABLE)
  assert set(la.AUTO_ORDER) <= {n for n, e in la.TABLE.items() if e.is_kernel}
  verified = {(n, p) for n, e in la.TABLE.items() for p, s in e.status.items()
              if s == la.VERIFIED}
  # No GPU kernel has run on a GPU: only the TPU kernel on TPU is verified.
  assert verified == {("pallas_tpu", "tpu")}


@pytest.mark.parametrize("backend, expected", [("cpu", "chunked"), ("gpu", "chunked"),
                                               ("cuda", "chunked"), ("tpu", "pallas_tpu")])
def test_auto_is_fail_closed_per_platform(monkeypatch, backend, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  q, k, v, slope = _inputs()
  seg = jnp.ones(q.shape[:2], jnp.int32)
  assert la._resolve_impl("auto", (q, k, v, slope, None, None)) == expected
  assert la._resolve_impl("auto", (q, k, v, slope, None, None), seg) == expected
  # Inputs the kernels' tests do not cover never reach a kernel.
  q32 = q[..., :32]
  assert la._resolve_impl("auto", (q32, q32, q32, slope, None, None)) == "chunked"
  q16 = q.astype(jnp.float16)
  assert la._resolve_impl("auto", (q16, q16, q16, slope, None, None)) == "chunked"


@pytest.mark.parametrize("backend, t, block_size, expected", [
    ("cpu", 256, 64, "chunked_parallel"), ("cpu", 256, 128, "chunked_parallel"),
    ("cpu", 255, 128, "chunked"),     # under two full blocks
    ("cpu", 64, 64, "chunked"),       # one block: the scan measured faster
    ("cpu", 4096, 256, "chunked"),    # blocks of 256: the scan measured as fast or faster
    ("cpu", 4096, None, "chunked"),   # None is the default block of 256
    ("gpu", 4096, 64, "chunked"),     # unmeasured off CPU
])
def test_auto_pure_jax_choice_follows_the_measured_cpu_rule(monkeypatch, backend, t,
                                                           block_size, expected):
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  q, k, v, slope = _inputs(t=t, d=32)
  assert la._resolve_impl("auto", (q, k, v, slope, None, block_size)) == expected


def test_explicit_kernel_that_cannot_run_here_says_why(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  q, k, v, slope = _inputs()
  # The compiled Mosaic GPU kernel takes bf16 only; asked for float32 on a GPU it says so.
  assert q.dtype == jnp.float32
  with pytest.raises(ValueError, match="compiled Mosaic GPU kernel takes bfloat16"):
    lightning_attention(q, k, v, slope, impl="pallas_gpu")
  # A row's `blocked` reason reaches the caller.
  monkeypatch.setitem(la.TABLE, "pallas_gpu", dataclasses.replace(
      la.TABLE["pallas_gpu"], blocked={"gpu": "a reason"}))
  with pytest.raises(ValueError, match="impl='pallas_gpu' cannot run on gpu: a reason"):
    lightning_attention(q, k, v, slope, impl="pallas_gpu")


def test_choice_is_logged_once_per_shape(caplog):
  q, k, v, slope = _inputs(t=7)
  la._LOGGED.clear()
  with caplog.at_level(logging.INFO, logger="m1jax.ops"):
    for _ in range(2):
      lightning_attention(q, k, v, slope, impl="auto", block_size=4)
    q2, k2, v2, _ = _inputs(t=9)
    lightning_attention(q2, k2, v2, slope, impl="auto", block_size=4)
  lines = [r.getMessage() for r in caplog.records if r.name == "m1jax.ops"]
  assert len(lines) == 2, lines
  assert "impl='auto' -> chunked for" in lines[0] and "(1, 7, 2, 64)" in lines[0]
