"""The CPU-only fp32 upcast of `_matmul` follows the LOWERING platform, not the host.

A TPU program compiled ahead of time on a CPU host must keep bf16 matmul operands (the MXU
path); only a program lowered for the CPU upcasts. Needs libtpu (requirements-test.txt).
"""
import os
import re

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from m1jax.ops import lightning_attention  # noqa: E402

_DOT = re.compile(r"stablehlo\.dot_general.*?:\s*\(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)")


def _dot_operand_dtypes(text: str) -> set:
  return {pair for pair in _DOT.findall(text)}


def _lower_chunked(mesh=None) -> str:
  q = jax.ShapeDtypeStruct((1, 40, 2, 64), jnp.bfloat16)
  slope = jax.ShapeDtypeStruct((2,), jnp.float32)

  def f(q, k, v, slope):
    return lightning_attention(q, k, v, slope, impl="chunked", block_size=16)

  if mesh is None:
    return jax.jit(f).lower(q, q, q, slope).as_text()
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    return jax.jit(f).lower(q, q, q, slope).as_text()


def test_tpu_lowering_from_cpu_keeps_bf16_dot_operands():
  topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2")
  mesh = Mesh(np.asarray(topo.devices)[:1], ("data",))
  dtypes = _dot_operand_dtypes(_lower_chunked(mesh))
  assert dtypes, "no dot_general found in the lowered text"
  assert ("f32", "f32") not in dtypes and ("bf16", "bf16") in dtypes, dtypes


def test_cpu_lowering_upcasts_dot_operands():
  dtypes = _dot_operand_dtypes(_lower_chunked())
  assert dtypes == {("f32", "f32")}, dtypes
