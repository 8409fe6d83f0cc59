"""m1jax.ops.grouped_matmul: every implementation against a float64 row-by-row reference and
ragged_dot's gradients (empty groups, one group taking every row, rows past sum(sizes) as
expert parallelism passes them), the chunk layout's invariants, which implementation each
platform resolves to, megablox compiled ahead of time for v5p and v6e, ragged_dot lowered for
CUDA. megablox runs in Pallas interpret mode on this CPU.
"""
import functools
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from m1jax.ops import grouped_matmul as gm  # noqa: E402
from m1jax.ops.grouped_matmul_chunked import (chunk_layout, chunk_size,  # noqa: E402
                                              grouped_matmul_chunked)
from m1jax.ops.grouped_matmul_megablox import grouped_matmul_megablox  # noqa: E402
from tests.assertions import assert_close  # noqa: E402

A, M, F = 40, 16, 24
# (group sizes, chunk length): several chunks per group, empty first and last groups, and
# everything in one group with a sum below A (rows 37.. belong to no group and must be 0).
# bfloat16 runs in tests/layers/test_moe_grouped.py.
SIZES = {
    "empty-0-and-3": ([0, 13, 27, 0], 8),
    "all-in-group-2-past-end": ([0, 0, 37, 0], 8),
}
IMPLS = {
    "chunked": grouped_matmul_chunked,
    "megablox": functools.partial(grouped_matmul_megablox, interpret=True),
}


def _case(name, dtype):
  sizes, chunk = SIZES[name]
  rng = np.random.default_rng(len(name))
  x = jnp.asarray(rng.standard_normal((A, M)), dtype)
  w = jnp.asarray(rng.standard_normal((len(sizes), M, F)) / np.sqrt(M), dtype)
  ct = jnp.asarray(rng.standard_normal((A, F)), dtype)
  return jnp.asarray(sizes, jnp.int32), chunk, x, w, ct


def _numpy_grouped(x, w, sizes):
  x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
  out = np.zeros((x.shape[0], w.shape[-1]))
  ends = np.cumsum(sizes)
  for g, (start, end) in enumerate(zip(ends - sizes, ends)):
    out[start:end] = x[start:end] @ w[g]
  return out


@pytest.mark.parametrize("case", list(SIZES))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_impl_matches_reference_forward_and_gradients(impl, case):
  sizes, chunk, x, w, ct = _case(case, jnp.float32)
  fn = IMPLS[impl] if impl != "chunked" else functools.partial(IMPLS[impl], chunk=chunk)

  def vjp(f):
    y, pullback = jax.vjp(lambda x, w: f(x, w, sizes), x, w)
    return y, pullback(ct)

  y, (dx, dw) = jax.jit(lambda: vjp(fn))()
  y_ref, (dx_ref, dw_ref) = jax.jit(lambda: vjp(jax.lax.ragged_dot))()
  assert y.dtype == x.dtype and dx.dtype == x.dtype and dw.dtype == w.dtype
  assert_close(y, _numpy_grouped(x, w, np.asarray(sizes)), name="y")
  assert_close(dx, dx_ref, name="dx")
  assert_close(dw, dw_ref, name="dw")
  total = int(np.sum(np.asarray(sizes)))
  # Rows past the groups, and their gradient, are exactly zero (not uninitialised memory).
  assert not np.any(np.asarray(y)[total:]) and not np.any(np.asarray(dx)[total:])
  for g in np.flatnonzero(np.asarray(sizes) == 0):
    assert not np.any(np.asarray(dw[g])), g
  assert np.all(np.abs(np.asarray(dw)[np.asarray(sizes) > 0]).sum(axis=(1, 2)) > 0)


@pytest.mark.parametrize("sizes, chunk", [
    ([0, 0, 0, 0], 8), ([40, 0, 0, 0], 8), ([8, 8, 8, 16], 8), ([1, 1, 1, 1], 8),
    ([9, 0, 17, 14], 4), ([3, 5, 7, 11, 13], None)])
def test_chunk_layout_holds_every_row_once_one_group_per_chunk(sizes, chunk):
  rows = 40
  layout = jax.jit(chunk_layout, static_argnums=(1, 2))(jnp.asarray(sizes, jnp.int32), rows,
                                                         chunk)
  source, dest, expert = (np.asarray(a) for a in layout)
  C = source.shape[1] if chunk is None else chunk
  assert C == (chunk or chunk_size(rows, len(sizes)))
  assert source.shape == (-(-rows // C) + len(sizes), C)
  total = sum(sizes)
  group_of_row = np.repeat(np.arange(len(sizes)), sizes)
  held = source[source < rows]
  np.testing.assert_array_equal(np.sort(held), np.arange(total))   # each real row once
  for z in range(source.shape[0]):
    rows_z = source[z][source[z] < rows]
    assert np.all(group_of_row[rows_z] == expert[z]), (z, rows_z, expert[z])
  # dest inverts source; rows past the groups go nowhere.
  np.testing.assert_array_equal(source.reshape(-1)[dest[:total]], np.arange(total))
  assert np.all(dest[total:] == source.size)


def test_resolve_per_platform_and_bad_names():
  assert gm.resolve("auto", jnp.bfloat16, "tpu") == "megablox"
  assert gm.resolve("auto", jnp.float16, "tpu") == "ragged_dot"   # megablox: f32/bf16 only
  assert gm.resolve("auto", jnp.float32, "gpu") == "ragged_dot"
  assert gm.resolve("auto", jnp.float32, "cpu") == "chunked"
  assert gm.resolve("chunked", jnp.float32, "gpu") == "chunked"
  with pytest.raises(ValueError, match=r"'megablox' cannot run on platform 'cpu'.*"
                                       r"can run here: ragged_dot, chunked"):
    gm.resolve("megablox", jnp.float32, "cpu")
  with pytest.raises(ValueError, match=r"dtype float16.*can run here: ragged_dot, chunked"):
    gm.resolve("megablox", jnp.float16, "tpu")
  with pytest.raises(ValueError, match="'gmm' is unknown"):
    gm.grouped_matmul(jnp.zeros((4, 2)), jnp.zeros((2, 2, 3)), jnp.array([2, 2]), "gmm")


def test_megablox_on_a_mesh_splits_rows_in_blocks_exactly():
  """On a 2x2 mesh the 40 sorted rows run as 4 blocks of 10 under shard_map: groups straddle
  blocks, a block can hold only empty-group boundaries or only rows past the groups."""
  sizes, _, x, w, ct = _case("all-in-group-2-past-end", jnp.float32)
  sizes = jnp.asarray([0, 14, 13, 0], jnp.int32)            # 27 rows; block 3 holds none
  mesh = Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "fsdp"))

  def vjp(f):
    y, pullback = jax.vjp(lambda x, w: f(x, w, sizes), x, w)
    return y, pullback(ct)

  with jax.set_mesh(mesh):
    y, (dx, dw) = jax.jit(lambda: vjp(IMPLS["megablox"]))()
  y_ref, (dx_ref, dw_ref) = jax.jit(lambda: vjp(jax.lax.ragged_dot))()
  for name, a, b in (("y", y, y_ref), ("dx", dx, dx_ref), ("dw", dw, dw_ref)):
    assert_close(a, b, name=name)
  assert not np.any(np.asarray(y)[27:]) and not np.any(np.asarray(dx)[27:])


def _fwd_bwd(impl):
  def loss(x, w, sizes):
    return jnp.sum(gm.grouped_matmul(x, w, sizes, impl).astype(jnp.float32) ** 2)
  return jax.grad(loss, argnums=(0, 1))


@pytest.mark.slow
@pytest.mark.parametrize("chip, topology", [("v5p", "v5p:2x2x1"), ("v6e", "v6e:2x2")])
def test_auto_is_megablox_compiled_for_tpu(chip, topology):
  """Mosaic compiles gmm (forward, d(x)) and tgmm (d(w)) for the chip, from this CPU."""
  from jax.experimental import topologies
  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  # All 4 chips: Mosaic cannot be auto-partitioned, so this checks the row-block shard_map.
  mesh = Mesh(np.asarray(topo.devices).reshape(2, 2), ("data", "fsdp"))
  args = (jax.ShapeDtypeStruct((1000, 256), jnp.bfloat16),
          jax.ShapeDtypeStruct((8, 256, 640), jnp.bfloat16),
          jax.ShapeDtypeStruct((8,), jnp.int32))
  with jax.set_mesh(mesh):
    text = jax.jit(_fwd_bwd("auto")).lower(*args).compile().as_text()
  # gmm for the forward and for d(x), tgmm for d(w).
  assert text.count('custom_call_target="tpu_custom_call"') == 3, chip
  assert "ragged" not in text


def test_auto_is_ragged_dot_lowered_for_cuda(monkeypatch):
  monkeypatch.setattr(gm, "lowering_platform", lambda: "gpu")
  args = (jax.ShapeDtypeStruct((40, 16), jnp.bfloat16),
          jax.ShapeDtypeStruct((4, 16, 24), jnp.bfloat16),
          jax.ShapeDtypeStruct((4,), jnp.int32))
  text = jax.jit(_fwd_bwd("auto")).trace(*args).lower(
      lowering_platforms=("cuda",)).as_text()
  assert "ragged_dot" in text


def test_auto_takes_megablox_only_for_tile_aligned_weights():
  """A weight dim off the 128-wide TPU tile (the tiny configs' F = 64) failed Pallas TPU
  lowering; auto falls back to ragged_dot there (an explicit megablox is still taken: it
  runs at any shape in interpret mode)."""
  assert gm.resolve("auto", jnp.float32, "tpu", w_shape=(4, 128, 256)) == "megablox"
  assert gm.resolve("auto", jnp.float32, "tpu", w_shape=(4, 128, 64)) == "ragged_dot"
  assert gm.resolve("megablox", jnp.float32, "tpu", w_shape=(4, 64, 128)) == "megablox"
