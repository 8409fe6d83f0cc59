"""Chunk math that every lightning kernel shares and no backend owns.

The TPU (Mosaic TPU), GPU (Mosaic GPU) and Triton (Pallas-Triton) kernels differ only in how
they move memory; the per-chunk algebra, its masks for packed documents, the sequence
geometry and the slope-gradient identity live here so the kernels cannot drift apart.
lightning_tpu.py's docstring derives the algebra; this module adds the document masks.

Packed documents (segment ids): a document is a maximal run of equal ids (exactly
`m1jax.ops` chunked semantics). The kernels read one int32 per token, `doc_start`: the
global position of the first token of that token's document (`doc_starts`). With it every
mask is a comparison against positions, so no kernel needs a cumulative sum or a transpose:
  same document (i >= j):  pos_j >= doc_start_i
  row i reads the carried state:   doc_start_i < max(chunk_start, 1)
    (chunk 0's first document owns the initial state; later chunks' rows read the carry
     only while their document began before the chunk)
  key j enters the next state:     pos_j >= doc_start of the chunk's last real row
  the carried state survives:      that last row's doc_start < max(chunk_start, 1)
The masks multiply `diag`, `q_decay`, `k_decay` and `span`, so the forward and all three
backward recurrences keep their unsegmented form. The slope-gradient identity is unchanged:
a document reset removes terms but never changes the exponent of a surviving one.

Dimension alphabet (docs/MODEL.md §2): B batch, T time, H heads, D head dim, C chunk length,
Z chunks.
"""
import dataclasses
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array
F32 = jnp.float32

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def next_power_of_two(x: int) -> int:
  return 1 << max(int(x) - 1, 0).bit_length()


@dataclasses.dataclass(frozen=True)
class Geometry:
  """A [B,T,H,D] problem cut into Z chunks of C positions (T padded to Z*C)."""
  batch: int
  seq_len: int
  heads: int
  head_dim: int
  chunk: int

  @property
  def num_chunks(self) -> int:
    return -(-self.seq_len // self.chunk)

  @property
  def padded_len(self) -> int:
    return self.num_chunks * self.chunk

  @property
  def fused(self) -> bool:
    return self.head_dim % 128 == 0

  @property
  def grid(self) -> tuple[int, int, int]:
    return (self.batch, self.heads, self.num_chunks)


def target_platform() -> str:
  """The platform this trace is being built for.

  Inside `jax.shard_map` or `jax.sharding.use_abstract_mesh` the abstract mesh names the
  devices' platform, which is what an ahead-of-time compile for a TPU or GPU target from a
  CPU host lowers for; outside any such mesh the default backend is the target.
  `jax.default_backend()` alone would say "cpu" during such a compile.
  """
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None)
  if device is not None:
    return device.platform
  return jax.default_backend()


def doc_starts(segment_ids_BT: Array) -> Array:
  """int32 [B,T]: the position of the first token of each token's document.

  A document is a maximal run of equal ids, so equal ids in non-adjacent runs (padding 0
  between documents) never join.
  """
  t = segment_ids_BT.shape[1]
  pos_BT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids_BT.shape)
  starts_BT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BT[:, :1], bool),
       segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  return lax.cummax(jnp.where(starts_BT, pos_BT, 0), axis=1)


@dataclasses.dataclass(frozen=True)
class ChunkDecays:
  diag: Array      # [C,C] f32, exp(-s (i-j)) for i >= j in one document, else 0
  q_decay: Array   # [C,1] f32, exp(-s (i+1)) where row i reads the carried state, else 0
  k_decay: Array   # [C,1] f32, exp(-s (m-1-j)) for real j in the last document, else 0
  span: Array      # [1,1] f32, exp(-s m) if the carried state survives the chunk, else 0
  valid: Array     # [C,1] bool, i < m
  pos1: Array      # [C,1] f32, global position + 1 (0 where invalid)


def chunk_decays(s, chunk_idx, *, seq_len: int, chunk: int,
                 doc_start: Optional[Array] = None) -> ChunkDecays:
  """Decay factors of one chunk; every exponent is -s * (non-negative), clamped then masked.

  doc_start: None (one document per row) or the chunk's [C,1] int32 `doc_starts` slice.
  """
  row = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
  col = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
  causal = row >= col
  i = lax.broadcasted_iota(jnp.int32, (chunk, 1), 0)
  start = chunk_idx * chunk
  m = jnp.minimum(seq_len - start, chunk)  # real positions in this chunk
  valid = i < m
  reads_state = None
  if doc_start is not None:
    causal = causal & (start + col >= doc_start)
    # The carry belongs to the document open at the chunk start (chunk 0: the first one).
    carried_before = jnp.maximum(start, 1)
    reads_state = doc_start < carried_before
    last_start = jnp.max(jnp.where(valid, doc_start, 0), axis=0, keepdims=True)  # [1,1]
  gap = jnp.where(causal, row - col, 0).astype(F32)
  diag = jnp.where(causal, jnp.exp(-s * gap), 0.0)

  q_decay = jnp.exp(-s * (i + 1).astype(F32))
  k_exp = jnp.maximum(m - 1 - i, 0).astype(F32)
  in_state = valid
  span = jnp.exp(-s * jnp.full((1, 1), m, jnp.int32).astype(F32))
  if doc_start is not None:
    q_decay = jnp.where(reads_state, q_decay, 0.0)
    in_state = valid & (start + i >= last_start)
    span = jnp.where(last_start < carried_before, span, 0.0)
  k_decay = jnp.where(in_state, jnp.exp(-s * k_exp), 0.0)
  pos1 = jnp.where(valid, (start + i + 1).astype(F32), 0.0)
  return ChunkDecays(diag, q_decay, k_decay, span, valid, pos1)


def weighted_rowdot(a_f32: Array, b_f32: Array, pos1: Array) -> Array:
  """sum_i pos1[i] * (a_i . b_i) as a [1,1] float32 value."""
  rows = jnp.sum(a_f32 * b_f32, axis=1, keepdims=True)
  return jnp.sum(rows * pos1, axis=0, keepdims=True)


def slope_grad(q_term_BH: Array, k_term_BH: Array, final_state_BHDD: Array,
               d_final_state_BHDD: Array, seq_len: int) -> Array:
  """dL/dslope [H] from the kernels' per-(b,h) q and k terms (lightning_tpu.py derives it):
  -sum_b (q_term - k_term + T <dS_final, S_final>)."""
  state_term_BH = jnp.sum(d_final_state_BHDD * final_state_BHDD, axis=(2, 3))
  return -jnp.sum(q_term_BH - k_term_BH + seq_len * state_term_BH, axis=0)


def pad_doc_starts(doc_start_BT: Array, padded_len: int) -> Array:
  """[B,T_pad] int32; padded positions get the last real value (they are masked anyway)."""
  t = doc_start_BT.shape[1]
  if padded_len == t:
    return doc_start_BT
  return jnp.pad(doc_start_BT, ((0, 0), (0, padded_len - t)), mode="edge")
