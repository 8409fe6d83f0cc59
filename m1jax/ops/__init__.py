"""Pure-JAX reference operators and the `impl=` selector."""
import importlib

from m1jax.ops import linear_attention
from m1jax.ops.linear_attention import (IMPLEMENTATIONS, lightning_attention,
                                        lightning_decode_step)

__all__ = ["IMPLEMENTATIONS", "lightning_attention", "lightning_decode_step"]

# impl name -> (its pallas_kernels ops module, the jax backends where "auto" picks it).
# Off those backends the kernels run in interpret mode when named explicitly.
_KERNELS = {
    "pallas_tpu": ("pallas_kernels.lightning_tpu_ops", ("tpu",)),
    "pallas_gpu": ("pallas_kernels.lightning_gpu_ops", ("gpu", "cuda")),
}


def _kernel_impl(module_name: str):
  def impl(*args, **kwargs):
    # Imported on first use so `import m1jax` stays cheap and never loads Pallas.
    return importlib.import_module(module_name).operator_impl(*args, **kwargs)
  return impl


def _kernel_auto(module_name: str, backends):
  def supported(q, k, v, slope, initial_state=None, block_size=None) -> bool:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() not in backends:  # checked before importing Pallas
      return False
    return importlib.import_module(module_name).auto_supported(
        q, k, v, slope, initial_state, block_size)
  return supported


for _name, (_module, _backends) in _KERNELS.items():
  IMPLEMENTATIONS.setdefault(_name, _kernel_impl(_module))
  linear_attention.AUTO_CANDIDATES.append((_name, _kernel_auto(_module, _backends)))
