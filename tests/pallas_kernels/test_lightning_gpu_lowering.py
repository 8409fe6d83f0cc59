"""CPU gates for the Pallas-Triton GPU kernel (experiments/aot_lightning_gpu.py).

(a) Lowering for cuda on the CPU jaxlib, forward and forward+backward, with and without
segment ids, at the benchmark shape: one Triton custom call forward, four forward+backward.
(b) A deviceless compile for an H100 of the sweep configs (needs jax-cuda12-plugin, pinned in
requirements-test.txt): every config the sweep may try must compile (shared memory, ptxas).
"""
import pytest

from experiments.aot_lightning_gpu import (BlockSizes, SWEEP_CONFIGS, compile_for_h100,
                                           lower_for_cuda, programs)
from tests.helpers import require

_CALLS = {"fwd": 1, "fwd_bwd": 4}


@pytest.mark.parametrize("segmented", [False, True], ids=["plain", "segment_ids"])
@pytest.mark.parametrize("prog", ["fwd", "fwd_bwd"])
def test_triton_kernel_lowers_for_cuda(prog, segmented):
  fn, args = programs(BlockSizes(), segmented=segmented)[prog]
  lowered, _ = lower_for_cuda(fn, args)
  assert lowered.as_text().count("__gpu$xla.gpu.triton") == _CALLS[prog]


@pytest.mark.parametrize("block_sizes", SWEEP_CONFIGS,
                         ids=lambda b: f"c{b.chunk}-s{b.split}-w{b.num_warps}-st{b.num_stages}")
def test_every_sweep_config_compiles_for_an_h100(block_sizes):
  require("jax_cuda12_plugin")
  for prog in ("fwd", "fwd_bwd"):
    fn, args = programs(block_sizes)[prog]
    compile_for_h100(fn, args)
