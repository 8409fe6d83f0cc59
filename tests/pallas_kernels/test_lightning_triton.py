"""Pallas-Triton lightning kernel (pallas_kernels/lightning_triton.py) against chunked.

On CPU the kernels run in Pallas interpret mode (`interpret=True`: the kernel body as plain
JAX, operands upcast to float32); on a GPU backend the same tests run the compiled Triton
kernels. Cases are a subset of the shared adversarial matrix (tests/pallas_kernels/cases.py:
B*H = 6, slopes 1e-6 .. 20, all five gradients with random cotangents) chosen to cover
T = 1, a tail chunk, several chunks, D 64 and 128, fp32 and bf16, and two column splits;
segment ids are covered by test_lightning_segments.py, lowering and compiling for an H100 by
test_lightning_gpu_lowering.py.
"""
import jax
import jax.numpy as jnp
import pytest

from m1jax.ops import lightning_attention
from m1jax.ops import linear_attention as la
from pallas_kernels import lightning_triton
from pallas_kernels.lightning_triton import BlockSizes
from pallas_kernels.lightning_triton_ops import lightning_attention_triton
from tests.pallas_kernels.cases import (BLOCK, bad_input_params, case_id, check_against_chunked,
                                        check_bad_input, check_operator_routes, large_inputs,
                                        make_inputs)

_ON_GPU = jax.default_backend() in ("gpu", "cuda")
INTERPRET = None if _ON_GPU else True

CASES = [(1, 64, jnp.float32), (BLOCK + 1, 64, jnp.bfloat16), (4 * BLOCK, 64, jnp.float32),
         (2 * BLOCK + 5, 128, jnp.float32), (3 * BLOCK, 128, jnp.bfloat16)]


def _kernel(q, k, v, slope, state, split=32):
  return lightning_attention_triton(q, k, v, slope, initial_state=state,
                                    block_sizes=BlockSizes(chunk=BLOCK, split=split),
                                    interpret=INTERPRET)


def _kernel_whole_columns(q, k, v, slope, state):
  return _kernel(q, k, v, slope, state, split=128)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_kernel_matches_chunked_forward_and_all_gradients(case):
  t, d, dtype = case
  args, cots = make_inputs(t, d, dtype)
  check_against_chunked(_kernel, args, cots, dtype)


def test_one_program_per_head_and_large_inputs_stay_finite():
  # split >= D: one program owns all columns; inputs x30 with slopes 1e-6 next to 20.
  args, cots = large_inputs(4 * BLOCK, 64, jnp.bfloat16)
  check_against_chunked(_kernel_whole_columns, args, cots, jnp.bfloat16)


def test_operator_routes_pallas_triton_to_the_kernel(monkeypatch):
  q, k, v, slope, state = check_operator_routes(monkeypatch, lightning_triton,
                                                "pallas_triton")
  # Never run on a GPU: "auto" must not pick it anywhere (fail-closed table).
  for backend in ("cpu", "gpu", "cuda", "tpu"):
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert la._resolve_impl("auto", (q, k, v, slope, state, None)) != "pallas_triton"


@pytest.mark.parametrize("change, match", bad_input_params())
def test_bad_inputs_raise_value_error_naming_the_argument(change, match):
  check_bad_input(lightning_attention_triton, "lightning_attention_triton", change, match,
                  interpret=True)


@pytest.mark.parametrize("field, value", [("chunk", 48), ("chunk", 8), ("split", 96)])
def test_non_power_of_two_blocks_raise_naming_the_field(field, value):
  (q, k, v, slope, state), _ = make_inputs(3, 64, jnp.float32)
  with pytest.raises(ValueError, match=f"block_sizes.{field} must be a power of two"):
    lightning_attention_triton(q, k, v, slope, initial_state=state, interpret=True,
                               block_sizes=BlockSizes(**{field: value}))
  if field == "chunk":  # the operator's block_size reaches the same check
    with pytest.raises(ValueError, match="block_sizes.chunk"):
      lightning_attention(q, k, v, slope, impl="pallas_triton", block_size=value)
