"""Packed training on a TPU runs the Pallas lightning kernel (issue 12).

No TPU needed: experiments/aot_train_step_tpu.py compiles a tiny model's loss and gradient on
packed rows (segment_ids) for a v5e chip with libtpu. With lightning_impl="auto" the compiled
HLO holds the three lightning Mosaic kernels (forward, dq, dk/dv); with "chunked" it holds
none, and the other Mosaic calls (the rest of the model) are the same.
"""
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

from experiments.aot_train_step_tpu import compile_train_step  # noqa: E402

_KERNELS = ["lightning_bwd_dkdv", "lightning_bwd_dq", "lightning_fwd"]


def test_auto_runs_the_lightning_kernels_in_a_packed_train_step_on_tpu():
  auto = compile_train_step("auto")
  chunked = compile_train_step("chunked")
  assert auto["kernel_names"] == _KERNELS
  assert chunked["kernel_names"] == []
  # One lightning layer: forward + dq + dk/dv.
  assert auto["tpu_custom_calls"] == chunked["tpu_custom_calls"] + 3
