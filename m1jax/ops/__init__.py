"""Pure-JAX reference operators and the `impl=` selector."""
from m1jax.ops import linear_attention
from m1jax.ops.linear_attention import (IMPLEMENTATIONS, lightning_attention,
                                        lightning_decode_step)

__all__ = ["IMPLEMENTATIONS", "lightning_attention", "lightning_decode_step"]


def _pallas_tpu(*args, **kwargs):
  """impl="pallas_tpu": pallas_kernels/lightning_tpu.py (interpret mode off TPU).

  Imported on first use so `import m1jax` stays cheap and never loads Pallas.
  """
  from pallas_kernels import lightning_tpu_ops  # pylint: disable=g-import-not-at-top
  return lightning_tpu_ops.operator_impl(*args, **kwargs)


def _pallas_tpu_auto(q, k, v, slope, initial_state=None, block_size=None) -> bool:
  """"auto" picks the kernel only on a TPU backend (checked before importing Pallas)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != "tpu":
    return False
  from pallas_kernels import lightning_tpu_ops  # pylint: disable=g-import-not-at-top
  return lightning_tpu_ops.auto_supported(q, k, v, slope, initial_state, block_size)


def _pallas_gpu(*args, **kwargs):
  """impl="pallas_gpu": pallas_kernels/lightning_gpu.py (Mosaic GPU interpret mode off GPU)."""
  from pallas_kernels import lightning_gpu_ops  # pylint: disable=g-import-not-at-top
  return lightning_gpu_ops.operator_impl(*args, **kwargs)


def _pallas_gpu_auto(q, k, v, slope, initial_state=None, block_size=None) -> bool:
  """"auto" picks the kernel only on a GPU backend (checked before importing Pallas)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() not in ("gpu", "cuda"):
    return False
  from pallas_kernels import lightning_gpu_ops  # pylint: disable=g-import-not-at-top
  return lightning_gpu_ops.auto_supported(q, k, v, slope, initial_state, block_size)


IMPLEMENTATIONS.setdefault("pallas_tpu", _pallas_tpu)
IMPLEMENTATIONS.setdefault("pallas_gpu", _pallas_gpu)
linear_attention.AUTO_CANDIDATES.append(("pallas_tpu", _pallas_tpu_auto))
linear_attention.AUTO_CANDIDATES.append(("pallas_gpu", _pallas_gpu_auto))
