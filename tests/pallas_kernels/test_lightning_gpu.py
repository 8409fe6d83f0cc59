"""Pallas Mosaic GPU lightning kernel (pallas_kernels/lightning_gpu.py) against chunked.

On CPU this runs in Mosaic GPU interpret mode (jax's GPU interpreter: simulated SMEM/GMEM,
TMA copies and barriers) with race detection and NaN-filled uninitialised memory, over the
adversarial matrix shared with the TPU kernel (tests/pallas_kernels/cases.py). Interpret
mode proves the math and the chunk/barrier/copy plumbing, not Hopper codegen: see the
module docstring of lightning_gpu.py for what changes on hardware. On a GPU backend the same
tests run the compiled kernel (interpret=None resolves to Mosaic GPU there).
"""
import jax
from jax import lax
from jax._src.pallas.mosaic_gpu.interpret import gpu_callbacks as _gpu_callbacks
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.ops import lightning_attention
from m1jax.ops import linear_attention as la
from pallas_kernels import lightning_gpu
from pallas_kernels.lightning_gpu import BlockSizes
from pallas_kernels.lightning_gpu_ops import lightning_attention_gpu
from tests.pallas_kernels.cases import (BLOCK, CASES, bad_input_params, case_id,
                                        check_against_chunked, check_bad_input,
                                        check_operator_routes, large_inputs, make_inputs)
from tests.pallas_kernels.race_detection import RaceWatch, checked_accesses

_ON_GPU = jax.default_backend() in ("gpu", "cuda")
# Interpret mode with race detection (used off a GPU, and by the racy-kernel test anywhere).
RACE_CHECKED = lightning_gpu.default_interpret_params(detect_races=True)
# None on a GPU: the compiled kernel. Elsewhere: interpret mode with race detection.
INTERPRET = None if _ON_GPU else RACE_CHECKED


@pytest.fixture(autouse=True)
def race_watch(monkeypatch, request):
  """Off a GPU: fails the test if the interpreter's race detector flags any kernel it ran,
  if a kernel was interpreted without the detector, or (unless marked no_kernel) if none was
  checked. On a GPU the kernels are compiled and nothing is interpreted."""
  watch = RaceWatch(monkeypatch, _gpu_callbacks, "GPURaceDetectionState")
  if not _ON_GPU:
    # The operator path (impl="pallas_gpu", interpret=None) interprets with the kernel's
    # default params, which leave the detector off: turn it on for these tests.
    assert hasattr(lightning_gpu, "DEFAULT_INTERPRET_PARAMS"), "lightning_gpu renamed it"
    monkeypatch.setattr(lightning_gpu, "DEFAULT_INTERPRET_PARAMS", RACE_CHECKED)
  yield watch
  if not _ON_GPU:
    watch.check(expect_kernel=request.node.get_closest_marker("no_kernel") is None)


def _kernel(q, k, v, slope, state):
  return lightning_attention_gpu(q, k, v, slope, initial_state=state,
                                 block_sizes=BlockSizes(BLOCK), interpret=INTERPRET)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_chunked_forward_and_all_gradients(case):
  t, d, dtype = case
  args, cots = make_inputs(t, d, dtype)
  check_against_chunked(_kernel, args, cots, dtype)


def test_large_inputs_and_extreme_slopes_stay_finite():
  # As for the TPU kernel: slope 1e-6 next to slope 20 over 4 chunks of large inputs.
  args, cots = large_inputs(4 * BLOCK, 64, jnp.bfloat16)
  check_against_chunked(_kernel, args, cots, jnp.bfloat16)


def test_compiled_chunk_with_documents_crossing_it_matches_chunked():
  # The chunk the compiled kernel uses (C = 64: wgmma's M), T = 70 not a multiple of it,
  # D = 128, bf16; row 0: documents start inside chunk 0 (20), at its last token (63, one
  # token long) and at the first token of chunk 1 (64); row 1: one crosses the boundary
  # (30..67) and one starts inside the tail chunk (68).
  t, chunk = 70, 64
  args, cots = make_inputs(t, 128, jnp.bfloat16, seed=3)
  lengths = [[20, 43, 1, 6], [30, 38, 2, 0]]
  seg = jnp.asarray([np.repeat(np.arange(1, 5), n) for n in lengths], jnp.int32)

  def kernel(q, k, v, slope, state):
    return lightning_attention_gpu(q, k, v, slope, initial_state=state, segment_ids=seg,
                                   block_sizes=BlockSizes(chunk), interpret=INTERPRET)

  def chunked(q, k, v, slope, state):
    return lightning_attention(q, k, v, slope, initial_state=state, impl="chunked",
                               block_size=chunk, segment_ids=seg)

  check_against_chunked(kernel, args, cots, jnp.bfloat16, reference=chunked)


@pytest.mark.no_kernel
def test_compiled_kernel_takes_bfloat16_only():
  (q, k, v, slope, state), _ = make_inputs(3, 64, jnp.float32)
  with pytest.raises(ValueError, match="lightning_attention_gpu: the compiled Mosaic GPU "
                     "kernel takes bfloat16 q, k, v; got float32"):
    jax.eval_shape(lambda *a: lightning_attention_gpu(*a[:4], initial_state=a[4],
                                                      interpret=False), q, k, v, slope, state)


def test_operator_routes_pallas_gpu_to_the_kernel_and_auto_to_chunked_on_cpu(monkeypatch):
  q, k, v, slope, state = check_operator_routes(monkeypatch, lightning_gpu, "pallas_gpu")
  if not _ON_GPU:
    assert la._resolve_impl("auto", (q, k, v, slope, state, BLOCK)) == "chunked"


@pytest.mark.parametrize("backend", ["gpu", "cuda"])
@pytest.mark.no_kernel
def test_auto_never_picks_a_gpu_kernel_that_has_not_run_on_a_gpu(monkeypatch, backend):
  # Fail-closed dispatch (m1jax/ops/linear_attention.py, TABLE): no GPU kernel's status is
  # VERIFIED on "gpu" until one compiled and passed numerics on a GPU.
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  (q, k, v, slope, state), _ = make_inputs(5, 64, jnp.float32)
  assert la._resolve_impl("auto", (q, k, v, slope, state, None)) == "chunked"
  q16 = q[..., :16]  # head_dim 16: not supported, fall back instead of failing
  assert la._resolve_impl("auto", (q16, q16, q16, slope, None, None)) == "chunked"
  assert la._resolve_impl("auto", (q, k, v, slope[:2], None, None)) == "chunked"


@pytest.mark.no_kernel
def test_auto_on_tpu_still_picks_the_tpu_kernel(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  (q, k, v, slope, state), _ = make_inputs(5, 64, jnp.float32)
  assert la._resolve_impl("auto", (q, k, v, slope, state, None)) == "pallas_tpu"


@pytest.mark.parametrize("change, match", bad_input_params())
@pytest.mark.no_kernel
def test_bad_inputs_raise_value_error_naming_the_argument(change, match):
  check_bad_input(lightning_attention_gpu, "lightning_attention_gpu", change, match,
                  interpret=INTERPRET)


@pytest.mark.no_kernel
def test_operator_rejects_unsupported_head_dim_for_explicit_pallas_gpu():
  (q, _, _, slope, _), _ = make_inputs(3, 64, jnp.float32)
  q16 = q[..., :16]
  with pytest.raises(ValueError, match="head_dim"):
    lightning_attention(q16, q16, q16, slope, impl="pallas_gpu")


# ------------------------------------------------------------------ the detector itself
def _two_warpgroups_one_buffer(x_ref, o_ref, smem):
  # Every warpgroup writes all of `smem` with no barrier in between; warpgroup 0 then
  # copies it out.
  smem[...] = x_ref[...] + lax.axis_index("wg").astype(jnp.float32)
  plgpu.commit_smem()

  @pl.when(lax.axis_index("wg") == 0)
  def _():
    plgpu.copy_smem_to_gmem(smem, o_ref)
    plgpu.wait_smem_to_gmem(0)


def _unsynchronised_smem_writes(num_threads: int):
  """A race with two warpgroups (their SMEM writes are unordered), none with one."""
  kernel = plgpu.kernel(
      _two_warpgroups_one_buffer, out_type=jax.ShapeDtypeStruct((128,), jnp.float32),
      scratch_types=[plgpu.SMEM((128,), jnp.float32)], num_threads=num_threads,
      thread_name="wg", compiler_params=lightning_gpu.COMPILER_PARAMS,
      interpret=RACE_CHECKED)
  return jax.block_until_ready(kernel(jnp.zeros((128,), jnp.float32)))


def test_race_detector_flags_two_warpgroups_writing_the_same_smem(race_watch):
  # Proves the fixture's checks can fail. Only threads (warpgroups) of one block run
  # concurrently in GPU interpret mode; grid points run one after another, so the race has to
  # be between warpgroups.
  _unsynchronised_smem_writes(num_threads=1)
  (serial,) = race_watch.take()
  assert checked_accesses(serial) > 0, "the detector checked no access: it is not running"
  assert not serial.races_found, "the detector flagged a race-free launch"
  _unsynchronised_smem_writes(num_threads=2)
  (racy,) = race_watch.take()
  assert racy.races_found, "two warpgroups wrote one SMEM buffer and the detector saw no race"
