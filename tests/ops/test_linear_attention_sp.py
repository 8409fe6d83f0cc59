"""LASP-2 sequence-parallel lightning attention against the unsharded chunked operator, on 8
fake CPU devices: outputs, final state and gradients in q, k, v, slope and initial state, with
slopes 1e-6..20 and packed documents whose boundaries sit on and next to shard edges."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import sharding
from m1jax.ops import lightning_attention
from m1jax.ops.linear_attention_sp import lightning_attention_sp, sequence_shards
from tests.assertions import assert_close

B, T, H, D = 2, 32, 4, 8
SLOPES = (1e-6, 0.05, 1.0, 20.0)
BLOCK = 3  # no shard length (16, 8, 4) is a multiple of it: every shard has a short tail


def _segments() -> np.ndarray:
  """Document starts (shard edges at multiples of 4, 8 and 16): row 0 at 8 and 16 (a
  shard's first token), 9, 15 (a shard's last token), a one-token document at 20, 21;
  row 1 runs one document over several edges, then starts at 23 (last) and 24 (first)."""
  seg = np.ones((B, T), np.int32)
  for start, doc in ((8, 2), (9, 3), (15, 4), (16, 5), (20, 6), (21, 7)):
    seg[0, start:] = doc
  seg[1, 23:], seg[1, 24:] = 2, 3
  return seg


def _inputs(dtype=jnp.float32, t=T, h=H, d=D, seed=0):
  # numpy draws: no per-shape compile of a jax RNG.
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.standard_normal((B, t, h, d)) * 0.5, dtype) for _ in range(3))
  init = jnp.asarray(rng.standard_normal((B, h, d, d)) * 0.3, jnp.float32)
  slope = jnp.asarray(np.geomspace(SLOPES[0], SLOPES[-1], h) if h != H else SLOPES, jnp.float32)
  return q, k, v, slope, init


@functools.lru_cache(maxsize=None)
def _reference(dtype=jnp.float32, t=T, segmented=False):
  """The unsharded chunked operator's outputs and grads (shared by the meshes)."""
  seg = jnp.asarray(_segments()) if segmented else None
  return _value_and_grads(lightning_attention, _inputs(dtype, t), segment_ids=seg)


def _value_and_grads(fn, args, **kwargs):
  """(out, final_state) and the grads in (q, k, v, slope, initial_state) of a loss that
  mixes both outputs."""
  def loss(q, k, v, slope, init):
    out, final = fn(q, k, v, slope, initial_state=init, impl="chunked", block_size=BLOCK,
                    **kwargs)
    return jnp.sum(jnp.sin(out.astype(jnp.float32))) + 0.1 * jnp.sum(final**2), (out, final)
  (_, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=range(5), has_aux=True))(*args)
  return outs, grads


def _compare(got, ref, dtype="float32", tol=None):
  names = ("out", "final_state", "d_q", "d_k", "d_v", "d_slope", "d_initial_state")
  for name, a, b in zip(names, jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert_close(a, b, dtype=dtype, tol=tol, name=name)


# (mesh, batch axes, head axes, packed documents): B over data, H over tensor, T over 2, 4
# and 8 shards. Row 1 of the packed rows carries the initial state through several shards
# without a cut; rows without segment ids run in test_long_shards_stay_finite_and_exact.
CASES = [("tensor=4,sequence=2", ("data",), "tensor", True),
         ("data=2,sequence=4", ("data",), "tensor", True),
         ("sequence=8", ("data",), "tensor", True)]


@pytest.mark.parametrize("spec,batch_axes,head_axes,segmented", CASES)
def test_sp_equals_chunked_fp32(spec, batch_axes, head_axes, segmented):
  seg = jnp.asarray(_segments()) if segmented else None
  with jax.set_mesh(sharding.make_mesh(spec)):
    got = _value_and_grads(lightning_attention_sp, _inputs(), segment_ids=seg,
                           batch_axes=batch_axes, head_axes=head_axes)
  _compare(got, _reference(segmented=segmented), tol=2e-6)


def test_sp_equals_chunked_bf16():
  args = _inputs(jnp.bfloat16)
  seg = jnp.asarray(_segments())
  ref = _reference(jnp.bfloat16, segmented=True)
  with jax.set_mesh(sharding.make_mesh("data=2,sequence=4")):
    got = _value_and_grads(lightning_attention_sp, args, segment_ids=seg, batch_axes="data")
  _compare(got, ref, dtype="bfloat16")


def test_long_shards_stay_finite_and_exact():
  # 512-token shards: lambda^(m·gap) underflows to 0 for slope 20 instead of overflowing.
  args = _inputs(t=1024)
  ref = _reference(t=1024)
  with jax.set_mesh(sharding.make_mesh("fsdp=2,tensor=2,sequence=2")):
    got = _value_and_grads(lightning_attention_sp, args, batch_axes="fsdp", head_axes="tensor")
  # The fp32 default tolerance: with slope 1e-6 the state sums ~1024 terms of size ~50, and
  # summation order alone moves the grads (measured: chunked at block 3 vs block 256 differ
  # by 2.9e-5 rms-relative in d_k; LASP-2 vs either, 1.6e-5).
  _compare(got, ref)


def test_one_state_all_gather_forward_and_reduce_scatter_backward():
  q, k, v, slope, init = _inputs()
  mesh = sharding.make_mesh("data=2,sequence=4")

  def loss(q, k, init):
    out, final = lightning_attention_sp(q, k, v, slope, initial_state=init, impl="chunked",
                                        batch_axes="data")
    return jnp.sum(out) + jnp.sum(final)
  with jax.set_mesh(mesh):
    fwd = jax.jit(loss).lower(q, k, init).compile().as_text()
    bwd = jax.jit(jax.grad(loss, argnums=(1,))).lower(q, k, init).compile().as_text()
  gathers = [l for l in fwd.splitlines() if " all-gather(" in l]
  # The per-shard [B/2,H,D,D] fp32 states, gathered over the 4 sequence shards.
  assert len(gathers) == 1 and f"f32[4,1,{H},{D},{D}]" in gathers[0], gathers
  # d/dk flows back through the gather: its transpose, a reduce-scatter of the state grads.
  scatters = [l for l in bwd.splitlines() if " reduce-scatter(" in l]
  assert len(scatters) == 1 and f"f32[1,1,{H},{D},{D}]" in scatters[0], scatters


def test_kernel_runs_per_shard():
  # The local pass is the configured operator: the TPU kernel (interpret mode here).
  q, k, v, slope, _ = _inputs(h=2, d=64)  # the kernel's head dims are 64 and 128
  seg = jnp.asarray(_segments())
  ref = lightning_attention(q, k, v, slope, impl="chunked", segment_ids=seg)
  with jax.set_mesh(sharding.make_mesh("fsdp=4,sequence=2")):
    got = jax.jit(lambda q, k, v: lightning_attention_sp(
        q, k, v, slope, impl="pallas_tpu", block_size=16, segment_ids=seg))(q, k, v)
  _compare(got, ref, tol=2e-6)


def test_bad_input_names_the_length_and_the_axis():
  q, k, v, slope, _ = _inputs(t=30)
  with jax.set_mesh(sharding.make_mesh("fsdp=2,sequence=4")):
    assert sequence_shards() == 4
    with pytest.raises(ValueError, match=r"sequence length T=30 .* not divisible by mesh "
                                         r"axes sequence = 4"):
      lightning_attention_sp(q, k, v, slope)
  with pytest.raises(ValueError, match=r"no mesh axis 'sequence'"):
    lightning_attention_sp(q, k, v, slope)
  assert sequence_shards() == 1
