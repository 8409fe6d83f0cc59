"""The Pallas TPU lightning kernel compiles with Mosaic for real TPU chips (v5e, v5p, v6e).

No TPU needed: libtpu (requirements-test.txt pins jax[tpu]) compiles ahead of time for an
abstract topology from `jax.experimental.topologies`. Shapes are the 456B model's lightning
layer (B=2, T=8192, H=64, D=128, bf16) on a (data=2, heads=2) mesh inside `jax.shard_map`.
experiments/aot_lightning_tpu.py is the same code writing benchmarks/results/.
"""
import os

# libtpu otherwise queries a metadata server that does not exist off Cloud TPU VMs.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import pytest  # noqa: E402

from experiments.aot_lightning_tpu import compile_for_chip  # noqa: E402

SHAPE = dict(batch=2, seq_len=8192, heads=64, head_dim=128, block_t=256)
# HBM per chip (Cloud TPU docs: v5e 16 GB, v5p 95 GB, v6e 32 GB).
HBM_BYTES = {"v5e": 16e9, "v5p": 95e9, "v6e": 32e9}


def _kernel_flops(chunk_terms, state_terms):
  """Flops per chip of one kernel doing `chunk_terms` C*C*D and `state_terms` C*D*D matmuls
  per chunk, on the local [1, 8192, 32, 128] block."""
  c, d = SHAPE["block_t"], SHAPE["head_dim"]
  steps = 1 * (SHAPE["heads"] // 2) * (SHAPE["seq_len"] // c)
  return steps * 2 * c * d * (chunk_terms * c + state_terms * d)


@pytest.mark.parametrize("chip", ["v5e", "v5p", "v6e"])
def test_forward_and_backward_compile_with_mosaic_at_456b_shapes(chip):
  record = compile_for_chip(chip, **SHAPE)
  assert record["local_shape_BTHD"] == [1, 8192, 32, 128]
  fwd, fwd_bwd = record["modes"]["fwd"], record["modes"]["fwd_bwd"]
  assert fwd["compiled"], fwd.get("error")
  assert fwd_bwd["compiled"], fwd_bwd.get("error")
  # Real Mosaic kernels, not interpret mode: 1 forward call, then forward + dq + dk/dv.
  assert fwd["mosaic_custom_calls"] >= 1
  assert fwd_bwd["mosaic_custom_calls"] >= 3
  fwd_flops = _kernel_flops(2, 2)
  bwd_flops = _kernel_flops(2, 2) + _kernel_flops(4, 3)
  assert fwd["cost_analysis_per_chip"]["flops"] == pytest.approx(fwd_flops, rel=1e-3)
  assert fwd_bwd["cost_analysis_per_chip"]["flops"] == pytest.approx(fwd_flops + bwd_flops,
                                                                     rel=1e-3)
  for mode in (fwd, fwd_bwd):
    mem = mode["memory_analysis_per_chip"]
    total = (mem["argument_size_in_bytes"] + mem["output_size_in_bytes"]
             + mem["temp_size_in_bytes"])
    assert total < HBM_BYTES[chip]
