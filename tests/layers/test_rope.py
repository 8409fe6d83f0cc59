"""Partial NeoX RoPE against an independent float64 numpy version of docs/MODEL.md §5.2.

The formula: inv_freq[i] = theta^(-2i/rotary_dim), emb = concat(freqs, freqs), dims
[0:rotary_dim] become x*cos(emb) + rotate_half(x)*sin(emb) with
rotate_half(u) = concat(-u[r/2:], u[:r/2]); dims [rotary_dim:] pass through.

Two references:
  * `rope_reference`: pure float64. Against it the float32 implementation is accurate only
    while angles are moderate: an fp32 angle of 1e6 rad carries ~0.03 rad of rounding, which
    no fp32 implementation (nor the remote code's fp32 cos/sin cache) avoids.
  * `rope_reference_fp32_tables`: the same float64 math, except that inv_freq and the angles
    are rounded to float32 exactly where the remote code builds its fp32 table
    (`1.0 / base ** (arange(0, r, 2).float() / r)`, then `outer(t, inv_freq)` in fp32). This
    is the meaningful comparison at positions like 1e6 and 10_239_999, and it holds under jit
    and eagerly alike (test_eager_matches_formula_too).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.layers import rope as rope_lib
from tests.assertions import assert_close
from tests.helpers import require

HEAD_DIM = 16


def apply_partial_rope(x_BTHD, positions_BT, rotary_dim, theta):
  # One compiled program per shape is much faster on CPU than dispatching op by op.
  return _jitted_rope(x_BTHD, positions_BT, rotary_dim, theta)


_jitted_rope = jax.jit(rope_lib.apply_partial_rope, static_argnums=(2, 3))
# The largest position the release supports (max_position_embeddings - 1).
LAST_RELEASE_POSITION = 10_240_000 - 1


def _rotate(x_BTHD: np.ndarray, angles_BTR: np.ndarray, rotary_dim: int) -> np.ndarray:
  x = x_BTHD.astype(np.float64)
  emb = np.concatenate([angles_BTR, angles_BTR], axis=-1)[:, :, None, :]
  u = x[..., :rotary_dim]
  half = rotary_dim // 2
  rotate_half_u = np.concatenate([-u[..., half:], u[..., :half]], axis=-1)
  return np.concatenate([u * np.cos(emb) + rotate_half_u * np.sin(emb), x[..., rotary_dim:]],
                        axis=-1)


def rope_reference(x_BTHD, positions_BT, rotary_dim, theta):
  inv_freq = theta ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
  angles = positions_BT.astype(np.float64)[..., None] * inv_freq
  return _rotate(x_BTHD, angles, rotary_dim)


def rope_reference_fp32_tables(x_BTHD, positions_BT, rotary_dim, theta):
  exponent = np.arange(0, rotary_dim, 2, dtype=np.float32) / np.float32(rotary_dim)
  # powf correctly rounded (float64 pow, one rounding), then an fp32 reciprocal, as torch does.
  power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
  inv_freq = (np.float32(1.0) / power).astype(np.float64)
  angles = (positions_BT.astype(np.float64)[..., None] * inv_freq).astype(np.float32)
  return _rotate(x_BTHD, angles.astype(np.float64), rotary_dim)


def _inputs(rng, batch, seq, heads, head_dim, dtype=np.float32):
  return rng.standard_normal((batch, seq, heads, head_dim)).astype(dtype)


ROTARY_DIMS = [pytest.param(HEAD_DIM // 2, id="rot-half"), pytest.param(HEAD_DIM, id="rot-full"),
               pytest.param(2, id="rot-2")]
THETAS = [pytest.param(1e4, id="theta1e4"), pytest.param(1e7, id="theta1e7")]


@pytest.mark.parametrize("rotary_dim", ROTARY_DIMS)
@pytest.mark.parametrize("theta", THETAS)
def test_matches_float64_formula_at_moderate_positions(rotary_dim, theta):
  rng = np.random.default_rng(rotary_dim)
  x = _inputs(rng, 2, 24, 3, HEAD_DIM)
  # Non-contiguous, unsorted, different per row, up to 4095.
  positions = np.stack([rng.permutation(4096)[:24], np.sort(rng.permutation(300)[:24])])
  positions[0, :3] = [0, 1, 4095]
  out = apply_partial_rope(jnp.asarray(x), jnp.asarray(positions), rotary_dim, theta)
  assert out.dtype == jnp.float32
  assert_close(out, rope_reference(x, positions, rotary_dim, theta), name="rope")


@pytest.mark.parametrize("rotary_dim, head_dim, theta", [
    pytest.param(8, 16, 1e4, id="D16-rot8-theta1e4"),
    pytest.param(64, 128, 1e7, id="release-D128-rot64-theta1e7"),
    pytest.param(128, 128, 1e7, id="D128-rot128-theta1e7"),
    pytest.param(2, 16, 1e7, id="D16-rot2-theta1e7"),
])
def test_matches_fp32_table_formula_at_large_positions(rotary_dim, head_dim, theta):
  rng = np.random.default_rng(head_dim + rotary_dim)
  x = _inputs(rng, 2, 8, 2, head_dim)
  positions = np.array([[0, 1, 65_536, 999_999, 1_000_000, 1_000_001, 4_000_037,
                         LAST_RELEASE_POSITION],
                        [LAST_RELEASE_POSITION, 7_777_777, 123_457, 2**23, 2**23 + 1, 3, 2, 1]])
  out = apply_partial_rope(jnp.asarray(x), jnp.asarray(positions), rotary_dim, theta)
  assert_close(out, rope_reference_fp32_tables(x, positions, rotary_dim, theta),
               name="rope@large-positions")
  # Against the pure float64 formula, each rotated pair may only be off by the fp32 rounding
  # of its angle (half an ulp of |angle|, plus the inv_freq rounding); a wrapped or
  # low-precision position would be off by O(1).
  expected = rope_reference(x, positions, rotary_dim, theta)
  inv_freq = theta ** (-np.arange(0, rotary_dim, 2) / rotary_dim)
  angle_BTR = positions[..., None] * inv_freq
  angle_error_BTR = 4 * np.spacing(angle_BTR.astype(np.float32)).astype(np.float64) + 1e-6
  bound_BTD = np.concatenate([angle_error_BTR, angle_error_BTR], -1)[:, :, None, :]
  radius = np.sqrt(2) * np.max(np.abs(x[..., :rotary_dim]))
  err = np.abs(np.asarray(out, np.float64) - expected)[..., :rotary_dim]
  assert np.all(err <= radius * bound_BTD), float(np.max(err / (radius * bound_BTD)))


@pytest.mark.parametrize("rotary_dim", ROTARY_DIMS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
def test_dims_beyond_rotary_dim_are_bit_identical(rotary_dim, dtype):
  rng = np.random.default_rng(1)
  x = jnp.asarray(_inputs(rng, 2, 5, 3, HEAD_DIM)).astype(dtype)
  positions = jnp.asarray([[3, 17, 1_000_000, 5, 9], [0, 2, 4, 6, 8]])
  out = apply_partial_rope(x, positions, rotary_dim, 1e7)
  assert out.dtype == dtype
  np.testing.assert_array_equal(np.asarray(out[..., rotary_dim:], np.float32),
                                np.asarray(x[..., rotary_dim:], np.float32))
  # Position 0 is the identity on every dim (angle 0).
  np.testing.assert_array_equal(np.asarray(out[1, 0], np.float32),
                                np.asarray(x[1, 0], np.float32))
  # ...and the rotated dims really move elsewhere.
  assert not np.allclose(np.asarray(out[0, 2, :, :rotary_dim], np.float32),
                         np.asarray(x[0, 2, :, :rotary_dim], np.float32))


def test_bf16_input_is_rotated_in_fp32_and_returned_as_bf16():
  rng = np.random.default_rng(2)
  x32 = _inputs(rng, 1, 6, 2, HEAD_DIM)
  x16 = jnp.asarray(x32).astype(jnp.bfloat16)
  positions = jnp.asarray([[0, 1, 2, 100, 3000, 4000]])
  out = apply_partial_rope(x16, positions, 8, 1e4)
  assert out.dtype == jnp.bfloat16
  # Rotating the bf16 values in fp32 and rounding once gives exactly this.
  expected = apply_partial_rope(x16.astype(jnp.float32), positions, 8, 1e4)
  np.testing.assert_array_equal(np.asarray(out, np.float32),
                                np.asarray(expected.astype(jnp.bfloat16), np.float32))
  assert_close(out, rope_reference(np.asarray(x16, np.float32), np.asarray(positions), 8, 1e4),
               dtype="bfloat16", name="rope-bf16")


@pytest.mark.parametrize("rotary_dim", ROTARY_DIMS)
def test_scores_depend_only_on_position_difference(rotary_dim):
  rng = np.random.default_rng(3)
  q = jnp.asarray(_inputs(rng, 1, 1, 4, HEAD_DIM))
  k = jnp.asarray(_inputs(rng, 1, 1, 4, HEAD_DIM))

  def score(q_pos: int, k_pos: int) -> np.ndarray:
    q_rot = apply_partial_rope(q, jnp.asarray([[q_pos]]), rotary_dim, 1e4)
    k_rot = apply_partial_rope(k, jnp.asarray([[k_pos]]), rotary_dim, 1e4)
    return np.asarray(jnp.sum(q_rot * k_rot, axis=-1))[0, 0]  # [H]

  for q_pos, k_pos in [(5, 2), (40, 40), (3, 90)]:
    base = score(q_pos, k_pos)
    for shift in (1, 17, 1000):
      assert_close(score(q_pos + shift, k_pos + shift), base,
                   name=f"score({q_pos}+{shift}, {k_pos}+{shift})")
  # A different offset gives a different score, so the check above has teeth.
  assert not np.allclose(score(5, 2), score(5, 3), rtol=1e-3)


def test_eager_matches_formula_too():
  # The tests above run under jit; the eager path (op by op, no fusion) must agree as well.
  rng = np.random.default_rng(4)
  x = jnp.asarray(_inputs(rng, 2, 3, 2, HEAD_DIM))
  positions = jnp.asarray([[7, 8, 9], [100, 200, 1_000_000]])
  out = rope_lib.apply_partial_rope(x, positions, 8, 1e4)
  assert_close(out, rope_reference_fp32_tables(np.asarray(x), np.asarray(positions), 8, 1e4),
               name="eager-rope")


@pytest.mark.parametrize("rotary_dim, theta", [(64, 1e7), (128, 1e7), (8, 1e4)],
                         ids=["rot64-theta1e7", "rot128-theta1e7", "rot8-theta1e4"])
def test_inverse_frequencies_equal_the_remote_codes_fp32_table(rotary_dim, theta):
  torch = require("torch")
  # MiniMaxM1RotaryEmbedding.__init__, verbatim in fp32.
  inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
  ours = np.asarray(rope_lib.rope_inverse_frequencies(rotary_dim, theta))
  np.testing.assert_array_equal(ours, inv_freq.numpy())
