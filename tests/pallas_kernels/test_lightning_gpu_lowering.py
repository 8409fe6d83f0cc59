"""CPU gates for the GPU lightning kernels, Pallas-Triton and Mosaic GPU
(experiments/aot_lightning_gpu.py).

(a) Lowering for cuda on the CPU jaxlib, forward and forward+backward, with and without
segment ids, at the benchmark shape: Triton 1 custom call forward, 4 forward+backward;
Mosaic GPU 1 and 3.
(b) A deviceless compile for an H100 (needs jax-cuda12-plugin, pinned in
requirements-test.txt; a failure, not a skip, under CI): every Triton sweep config and the
Mosaic GPU kernel must compile (shared memory, ptxas).
"""
import pytest

from experiments.aot_lightning_gpu import (CALLS, CUSTOM_CALL, MOSAIC_CONFIGS, BlockSizes,
                                           SWEEP_CONFIGS, compile_for_h100, lower_for_cuda,
                                           programs)
from tests.helpers import require

_DEFAULT = {"triton": BlockSizes(), "mosaic": MOSAIC_CONFIGS[0]}


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segment_ids"])
@pytest.mark.parametrize("prog", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("kernel", ["triton", "mosaic"])
def test_kernel_lowers_for_cuda(kernel, prog, segmented):
  fn, args = programs(_DEFAULT[kernel], segmented=segmented, kernel=kernel)[prog]
  lowered, _ = lower_for_cuda(fn, args)
  assert lowered.as_text().count(CUSTOM_CALL[kernel]) == CALLS[kernel, prog]


@pytest.mark.parametrize("block_sizes", SWEEP_CONFIGS,
                         ids=lambda b: f"c{b.chunk}-s{b.split}-w{b.num_warps}-st{b.num_stages}")
def test_every_sweep_config_compiles_for_an_h100(block_sizes):
  require("jax_cuda12_plugin")
  for prog in ("fwd", "fwd_bwd"):
    fn, args = programs(block_sizes)[prog]
    compile_for_h100(fn, args)


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segment_ids"])
def test_mosaic_kernel_compiles_for_an_h100(segmented):
  # fwd+bwd holds all three Mosaic kernels (fwd, dq, dkdv).
  require("jax_cuda12_plugin")
  for block_sizes in MOSAIC_CONFIGS:
    fn, args = programs(block_sizes, segmented=segmented, kernel="mosaic")["fwd_bwd"]
    compile_for_h100(fn, args)
