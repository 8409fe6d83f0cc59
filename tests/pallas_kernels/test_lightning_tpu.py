"""Pallas TPU lightning kernel (pallas_kernels/lightning_tpu.py) against the chunked reference.

The trust chain's last link: float64 loop -> naive -> chunked (tests/ops) -> this kernel, in
TPU interpret mode on CPU with race detection and NaN-filled uninitialised memory. Outputs
and every gradient (q, k, v, slope, initial_state; random cotangents on the output and the
final state) are compared, for fp32 and bf16, T in {1, C-1, C+1, several C}, head_dim 64 and
128, B*H = 6 and slopes 1e-6 .. 20 in every case.
"""
import dataclasses

import jax
from jax._src.pallas.mosaic.interpret import interpret_pallas_call as _interpret_impl
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import optax
import pytest

from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.ops import lightning_attention
from m1jax.ops import linear_attention as la
from pallas_kernels import lightning_tpu
from pallas_kernels.lightning_tpu import BlockSizes
from pallas_kernels.lightning_tpu_ops import lightning_attention_tpu
from tests.assertions import assert_close
from tests.pallas_kernels.cases import (BLOCK, CASES, bad_input_cases, case_id,
                                        check_against_chunked, make_inputs)
from tests.helpers import random_ids, random_params, tiny_config
from tests.pallas_kernels.race_detection import RaceWatch, checked_accesses

INTERPRET = pltpu.InterpretParams(detect_races=True, uninitialized_memory="nan")
_inputs = make_inputs


@pytest.fixture(autouse=True)
def race_watch(monkeypatch, request):
  """Fails the test if the interpreter's race detector flags any kernel it ran, if a kernel
  was interpreted without the detector, or (unless marked no_kernel) if none was checked."""
  watch = RaceWatch(monkeypatch, _interpret_impl, "RaceDetectionState")
  # The operator path (impl="pallas_tpu", interpret=None) interprets with the kernel's
  # default params, which leave the detector off: turn it on for these tests.
  assert hasattr(lightning_tpu, "DEFAULT_INTERPRET_PARAMS"), "lightning_tpu renamed its default"
  monkeypatch.setattr(lightning_tpu, "DEFAULT_INTERPRET_PARAMS", INTERPRET)
  yield watch
  watch.check(expect_kernel=request.node.get_closest_marker("no_kernel") is None)


def _kernel(q, k, v, slope, state, interpret=INTERPRET):
  return lightning_attention_tpu(q, k, v, slope, initial_state=state,
                                 block_sizes=BlockSizes(BLOCK), interpret=interpret)


def _kernel_two_cores(q, k, v, slope, state):
  return _kernel(q, k, v, slope, state,
                 interpret=dataclasses.replace(INTERPRET, num_cores_or_threads=2))


def _check_against_chunked(args, cots, dtype, kernel=_kernel):
  check_against_chunked(kernel, args, cots, dtype)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_chunked_forward_and_all_gradients(case):
  t, d, dtype = case
  args, cots = _inputs(t, d, dtype)
  _check_against_chunked(args, cots, dtype)


def test_two_simulated_cores_split_the_parallel_grid_without_races():
  # B and H are "parallel": with two cores each takes part of the grid; the per-core VMEM
  # state must not leak between (b, h) pairs and no output block may be written twice.
  args, cots = _inputs(BLOCK + 1, 64, jnp.float32, seed=3)
  _check_against_chunked(args, cots, jnp.float32, kernel=_kernel_two_cores)


def test_large_inputs_and_extreme_slopes_stay_finite():
  # Undecayed (slope 1e-6) sums over 64 steps of large k v^T, next to slope 20 (decay
  # e^-20 per step, e^-1280 over a chunk): any exp(+s n) factorisation would overflow.
  args, cots = _inputs(4 * BLOCK, 64, jnp.bfloat16, seed=5)
  args = tuple(x * 30 if i < 3 else x for i, x in enumerate(args))
  _check_against_chunked(args, cots, jnp.bfloat16)


def test_operator_routes_pallas_tpu_to_the_kernel_and_auto_to_chunked_on_cpu(monkeypatch):
  args, _ = _inputs(BLOCK + 3, 64, jnp.float32, seed=7)
  q, k, v, slope, state = args
  calls = []
  original = lightning_tpu.forward
  monkeypatch.setattr(lightning_tpu, "forward",
                      lambda *a, **kw: calls.append(1) or original(*a, **kw))
  out, final = lightning_attention(q, k, v, slope, initial_state=state, impl="pallas_tpu",
                                   block_size=BLOCK)
  assert calls, "impl='pallas_tpu' did not reach the kernel"
  ref_out, ref_final = lightning_attention(q, k, v, slope, initial_state=state,
                                           impl="chunked", block_size=BLOCK)
  assert_close(out, ref_out, name="out")
  assert_close(final, ref_final, name="final_state")
  # On CPU "auto" must not pick the kernel, and never fails on shapes the kernel rejects.
  assert la._resolve_impl("auto", (q, k, v, slope, state, BLOCK)) == "chunked"
  q16 = q[..., :16]
  assert la._resolve_impl("auto", (q16, q16, q16, slope, None, BLOCK)) == "chunked"


@pytest.mark.no_kernel
def test_auto_picks_the_kernel_on_tpu_only_for_supported_shapes(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  (q, k, v, slope, state), _ = _inputs(5, 64, jnp.float32)
  assert la._resolve_impl("auto", (q, k, v, slope, state, None)) == "pallas_tpu"
  q16 = q[..., :16]  # head_dim 16: not supported, fall back instead of failing
  assert la._resolve_impl("auto", (q16, q16, q16, slope, None, None)) == "chunked"
  assert la._resolve_impl("auto", (q, k, v, slope[:2], None, None)) == "chunked"


def _bad(q, k, v, slope, state):
  return lightning_attention_tpu(q, k, v, slope, initial_state=state, interpret=INTERPRET)


_BAD = bad_input_cases()


@pytest.mark.parametrize("change, match", [c[:2] for c in _BAD], ids=[c[2] for c in _BAD])
@pytest.mark.no_kernel
def test_bad_inputs_raise_value_error_naming_the_argument(change, match):
  (q, k, v, slope, state), _ = _inputs(3, 64, jnp.float32)
  kwargs = change(dict(q=q, k=k, v=v, slope=slope, state=state))
  with pytest.raises(ValueError, match=match):
    _bad(**kwargs)


@pytest.mark.no_kernel
def test_operator_rejects_unsupported_head_dim_for_explicit_pallas_tpu():
  (q, k, v, slope, _), _ = _inputs(3, 64, jnp.float32)
  q16 = q[..., :16]
  with pytest.raises(ValueError, match="head_dim"):
    lightning_attention(q16, q16, q16, slope, impl="pallas_tpu")


def test_whole_model_loss_and_gradient_match_chunked():
  # head_dim 64 (the kernel's smallest), one lightning and one softmax layer, T = 20 crosses
  # a block boundary with a short tail.
  base = tiny_config((0, 1), num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                     block_size=BLOCK, rotary_dim=64)
  params = random_params(base, 0)
  ids = random_ids(1, 2, 21)

  def loss_and_grad(impl):
    config = dataclasses.replace(base, lightning_impl=impl)
    model = MiniMaxM1ForCausalLM(config)

    def loss(p):
      logits = model.apply({"params": p}, ids[:, :-1]).logits
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]))

    return jax.jit(jax.value_and_grad(loss))(params)

  loss_k, grad_k = loss_and_grad("pallas_tpu")
  loss_c, grad_c = loss_and_grad("chunked")
  assert_close(loss_k, loss_c, name="loss")
  flat_k = jax.tree_util.tree_leaves_with_path(grad_k)
  flat_c = jax.tree_util.tree_leaves(grad_c)
  for (path, g_k), g_c in zip(flat_k, flat_c):
    assert_close(g_k, g_c, tol=1e-4, name=jax.tree_util.keystr(path))


# ------------------------------------------------------------------ the detector itself
def _same_block_kernel(x_ref, o_ref):
  o_ref[...] = x_ref[...] + pl.program_id(0).astype(jnp.float32)


def _write_one_block_from_every_grid_point(num_cores: int):
  """Both grid points write output block (0, 0): a race when the grid is "parallel" and
  split over two simulated cores, sequential (no race) on one core."""
  semantics = "parallel" if num_cores > 1 else "arbitrary"
  call = pl.pallas_call(
      _same_block_kernel, out_shape=jax.ShapeDtypeStruct((8, 128), jnp.float32), grid=(2,),
      in_specs=[pl.BlockSpec((8, 128), lambda i: (0, 0))],
      out_specs=pl.BlockSpec((8, 128), lambda i: (0, 0)),
      compiler_params=pltpu.CompilerParams(dimension_semantics=(semantics,)),
      interpret=dataclasses.replace(INTERPRET, num_cores_or_threads=num_cores))
  return jax.block_until_ready(call(jnp.zeros((8, 128), jnp.float32)))


def test_race_detector_flags_two_cores_writing_the_same_block(race_watch):
  # Proves the fixture's checks can fail: the same write pattern races on two cores and is
  # race-free on one.
  _write_one_block_from_every_grid_point(num_cores=1)
  (serial,) = race_watch.take()
  assert checked_accesses(serial) > 0, "the detector checked no access: it is not running"
  assert not serial.races_found, "the detector flagged a race-free launch"
  _write_one_block_from_every_grid_point(num_cores=2)
  (racy,) = race_watch.take()
  assert racy.races_found, "two cores wrote one output block and the detector saw no race"
