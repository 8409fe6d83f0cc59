"""One closeness check for every test: RMS-relative error with a tolerance per dtype.

Max-abs tolerances are either too loose for small outputs or too tight for bf16 spikes;
the RMS of the difference relative to the RMS of the reference is scale-free and stable.
"""
import numpy as np

# RMS-relative tolerance by the dtype the computation ran in.
RMS_TOLERANCE = {
    "float64": 1e-10,
    "float32": 2e-5,
    "bfloat16": 2e-2,
}


def _as_f64(x) -> np.ndarray:
  return np.asarray(np.asarray(x, dtype=np.float32), dtype=np.float64)


def rms_relative_error(actual, expected) -> float:
  actual, expected = _as_f64(actual), _as_f64(expected)
  scale = np.sqrt(np.mean(expected**2))
  diff = np.sqrt(np.mean((actual - expected) ** 2))
  return float(diff / scale) if scale > 0 else float(diff)


def assert_close(actual, expected, *, dtype="float32", tol=None, name="value"):
  """Fail, with the numbers, unless `actual` matches `expected` within the dtype's tolerance."""
  actual_np, expected_np = _as_f64(actual), _as_f64(expected)
  if actual_np.shape != expected_np.shape:
    raise AssertionError(f"{name}: shape {actual_np.shape} != expected {expected_np.shape}")
  if not np.all(np.isfinite(actual_np)):
    raise AssertionError(f"{name}: {np.sum(~np.isfinite(actual_np))} non-finite values")
  tol = RMS_TOLERANCE[str(np.dtype(dtype))] if tol is None else tol
  err = rms_relative_error(actual_np, expected_np)
  max_abs = float(np.max(np.abs(actual_np - expected_np))) if actual_np.size else 0.0
  if err > tol:
    raise AssertionError(
        f"{name}: rms-relative error {err:.3e} > tol {tol:.1e} (max |diff| {max_abs:.3e}, "
        f"max |expected| {float(np.max(np.abs(expected_np))) if expected_np.size else 0.0:.3e})")
