"""CPU gates for the GPU lightning kernels, Pallas-Triton and Mosaic GPU
(experiments/aot_lightning_gpu.py).

(a) Lowering for cuda on the CPU jaxlib, forward and forward+backward, with and without
segment ids, at the benchmark shape: Triton 1 custom call forward, 4 forward+backward;
Mosaic GPU 1 and 3.
(b) A deviceless compile for an H100 (needs jax-cuda12-plugin, pinned in
requirements-test.txt; a failure, not a skip, under CI): every Triton sweep config and the
Mosaic GPU kernel must compile (shared memory, ptxas), and every kernel's register count
must be readable (cubin .nv.info for Triton, ptxas -v for Mosaic).
"""
import pytest

from experiments import gpu_kernel_resources as gkr
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
def test_every_sweep_config_compiles_for_an_h100(block_sizes, tmp_path):
  require("jax_cuda12_plugin")
  kernels = {"fwd": ["lightning_fwd_triton"],
             "fwd_bwd": ["lightning_bwd_dq_triton", "lightning_bwd_dk_triton",
                         "lightning_bwd_dv_triton"]}
  for prog in ("fwd", "fwd_bwd"):
    fn, args = programs(block_sizes)[prog]
    cache = str(tmp_path / f"{prog}.kernels")
    compile_for_h100(fn, args, xla_gpu_kernel_cache_file=cache)
    resources = gkr.kernel_cache_resources(cache)
    for name in kernels[prog]:
      assert 0 < resources[name]["registers"] <= 255, (name, resources)


def test_mosaic_kernel_compiles_for_an_h100(monkeypatch):
  # fwd+bwd holds all three Mosaic kernels (fwd, dq, dkdv). With segment ids only: those
  # kernels are the plain ones plus the document loads (more SMEM and registers), and the
  # plain ones are lowered above; compiling both cost 13 s more of CI.
  require("jax_cuda12_plugin")
  monkeypatch.setenv("MOSAIC_GPU_DUMP_PTXAS", "1")
  for block_sizes in MOSAIC_CONFIGS:
    fn, args = programs(block_sizes, segmented=True, kernel="mosaic")["fwd_bwd"]
    with gkr.captured_output() as out:
      compile_for_h100(fn, args)
    reports = gkr.ptxas_reports(out[0])
    assert len(reports) == 3, out[0][-2000:]
    assert all(0 < r["registers"] <= 255 for r in reports), reports


def test_ptxas_report_parser_reads_registers_and_spills():
  # The shape of ptxas -v output as Mosaic GPU's compile prints it (two entry functions).
  text = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'kernel_a' for 'sm_90a'
ptxas info    : Function properties for kernel_a
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 251 registers, used 2 barriers, 1 bytes smem
ptxas warning : Registers are spilled to local memory in function 'kernel_b', 268 bytes spill stores, 260 bytes spill loads
ptxas info    : Compiling entry function 'kernel_b' for 'sm_90a'
ptxas info    : Function properties for kernel_b
    272 bytes stack frame, 268 bytes spill stores, 260 bytes spill loads
ptxas info    : Used 255 registers, used 2 barriers, 272 bytes cumulative stack size
"""
  assert gkr.ptxas_reports(text) == [
      {"kernel": "kernel_a", "registers": 251, "stack_bytes": 0, "spill_store_bytes": 0,
       "spill_load_bytes": 0},
      {"kernel": "kernel_b", "registers": 255, "stack_bytes": 272, "spill_store_bytes": 268,
       "spill_load_bytes": 260}]
