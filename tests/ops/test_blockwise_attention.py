"""Blockwise (flash) softmax attention against the XLA path it replaces, forward and gradient,
and the attention_impl selection (m1jax/ops/attention_impl.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax.layers.cache_info import EMPTY_POSITION
from m1jax.layers.softmax_attention import causal_gqa_attention, cached_gqa_attention
from m1jax.ops import attention_impl
from m1jax.ops import blockwise_attention as bw
from m1jax.ops.blockwise_attention import (blockwise_cached_gqa_attention,
                                           blockwise_gqa_attention)
from tests.assertions import assert_close
from tests.helpers import tiny_config

# Odd lengths and blocks: T = 37 is no multiple of either block, and the last chunk is short.
B, T, D = 2, 37, 8
BLOCKS = dict(block_q=8, block_k=16)
DTYPE_NAME = {jnp.float32: "float32", jnp.bfloat16: "bfloat16"}


def _qkv(H, K, dtype, seed=0, T=T):
  r = np.random.default_rng(seed)
  return tuple(jnp.asarray(r.standard_normal(shape), dtype)
               for shape in ((B, T, H, D), (B, T, K, D), (B, T, K, D)))


def _masks(kind):
  """(q positions, key positions, segment ids or None) as the model builds them."""
  idx = np.arange(T)[None]
  if kind == "plain":
    pos = jnp.asarray(np.broadcast_to(idx, (B, T)), jnp.int32)
    return pos, pos, None
  if kind == "left_padding":
    real = jnp.asarray(idx >= np.array([[0], [5]]))  # row 1 has 5 padding tokens
    pos = jnp.cumsum(real.astype(jnp.int32), axis=1) - 1
    return pos, jnp.where(real, pos, EMPTY_POSITION), None
  # Packed rows: documents restart positions; segment 0 is padding at the row end.
  seg = np.ones((B, T), np.int32)
  seg[0, 11:30], seg[0, 30:] = 2, 0
  seg[1, 20:] = 2
  starts = np.concatenate([np.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], axis=1)
  pos = np.zeros((B, T), np.int32)
  for b in range(B):
    for t in range(1, T):
      pos[b, t] = 0 if starts[b, t] else pos[b, t - 1] + 1
  kpos = np.where(seg != 0, pos, EMPTY_POSITION)
  return jnp.asarray(pos), jnp.asarray(kpos), jnp.asarray(seg)


def _loss(fn, pos, kpos, seg):
  # A non-linear readout, so every output element gets its own cotangent.
  return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v, pos, kpos, seg, seg).astype(jnp.float32)))


# GQA and MQA in float32 for every mask kind; bf16 with GQA.
CASES = [(kind, heads, jnp.float32) for kind in ("plain", "left_padding", "packed")
         for heads in ((4, 2), (4, 1))] + [
             (kind, (4, 2), jnp.bfloat16) for kind in ("plain", "left_padding", "packed")]


@pytest.mark.parametrize("kind,heads,dtype", CASES, ids=lambda x: (
    {(4, 2): "gqa", (4, 1): "mqa"}.get(x, DTYPE_NAME.get(x, x)) if not isinstance(x, str)
    else x))
def test_blockwise_matches_xla_forward_and_gradient(kind, heads, dtype):
  q, k, v = _qkv(*heads, dtype)
  pos, kpos, seg = _masks(kind)
  blockwise = lambda *a: blockwise_gqa_attention(*a, **BLOCKS)
  expect = causal_gqa_attention(q, k, v, pos, kpos, seg, seg)
  got = jax.jit(blockwise)(q, k, v, pos, kpos, seg, seg)
  assert got.dtype == expect.dtype and got.shape == expect.shape
  # Every position, padding rows included (they see no key: the XLA path's uniform softmax).
  assert_close(got, expect, dtype=DTYPE_NAME[dtype], name="out")
  g_expect = jax.grad(_loss(causal_gqa_attention, pos, kpos, seg), argnums=(0, 1, 2))(q, k, v)
  g_got = jax.jit(jax.grad(_loss(blockwise, pos, kpos, seg), argnums=(0, 1, 2)))(q, k, v)
  for name, a, e in zip("qkv", g_got, g_expect):
    assert a.dtype == e.dtype, name
    assert_close(a, e, dtype=DTYPE_NAME[dtype], name=f"d{name}")


@pytest.mark.parametrize("kind", ["plain", "left_padding", "packed"])
def test_chunk_pair_modes_are_exact_about_skip_and_full(kind):
  """A SKIP pair has no visible (query, key), a FULL pair only visible ones (the branch
  that leaves the mask out relies on it); on plain causal rows the range test is exact, so
  every other pair is MASKED."""
  pos, kpos, seg = _masks(kind)
  seg = jnp.zeros((B, T), jnp.int32) if seg is None else seg
  q_parts = bw._query_chunks(jnp.zeros((B, T, 4, D)), pos, seg, 2, BLOCKS["block_q"])
  k_parts = bw._key_chunks(jnp.zeros((B, T, 2, D)), jnp.zeros((B, T, 2, D)), kpos, seg,
                           BLOCKS["block_k"])
  modes = np.asarray(bw._pair_modes_ZW(q_parts[1], q_parts[2], k_parts[2], k_parts[3]))
  q_pos, q_seg, k_pos, k_seg = (np.asarray(x) for x in (*q_parts[1:], *k_parts[2:]))
  counts = {bw.SKIP: 0, bw.MASKED: 0, bw.FULL: 0}
  for z in range(modes.shape[0]):
    for w in range(modes.shape[1]):
      vis = ((k_pos[w][:, None, :] <= q_pos[z][:, :, None])
             & (k_seg[w][:, None, :] == q_seg[z][:, :, None]))
      counts[int(modes[z, w])] += 1
      if modes[z, w] == bw.SKIP:
        assert not vis.any(), (z, w)
      elif modes[z, w] == bw.FULL:
        assert vis.all(), (z, w)
      elif kind == "plain":
        assert vis.any() and not vis.all(), (z, w)
  # The plain rows reach all three branches (so the forward/gradient test above runs the
  # maskless one); padded and packed rows at this size have no all-visible pair.
  if kind == "plain":
    assert counts[bw.FULL] > 0 and counts[bw.SKIP] > 0 and counts[bw.MASKED] > 0, counts


def test_blockwise_skips_invisible_chunk_pairs_and_keeps_memory_linear():
  """The forward+backward holds no [T,T] array: its biggest temporary is O(T·block)."""
  H, K, T_long, blk = 4, 2, 1024, 128
  q, k, v = _qkv(H, K, jnp.float32, T=T_long)
  pos = jnp.broadcast_to(jnp.arange(T_long, dtype=jnp.int32), (B, T_long))
  f = jax.jit(jax.grad(lambda q, k, v: jnp.sum(blockwise_gqa_attention(
      q, k, v, pos, pos, block_q=blk, block_k=blk) ** 2), argnums=(0, 1, 2)))
  compiled = f.lower(q, k, v).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  full_logits = B * H * T_long * T_long * 4
  assert temp < full_logits / 4, (temp, full_logits)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("new_tokens", [1, 5])
def test_blockwise_cached_matches_xla(new_tokens, dtype):
  """Decode (1 new token) and chunked prefill (5) over a cache of 24 slots, partly empty,
  one row left-padded in the cache, at different cache lengths per row."""
  H, K, S = 4, 2, 24
  r = np.random.default_rng(3)
  q, k_new, v_new = (jnp.asarray(r.standard_normal(s), dtype) for s in
                     ((B, new_tokens, H, D), (B, new_tokens, K, D), (B, new_tokens, K, D)))
  k_cache, v_cache = (jnp.asarray(r.standard_normal((B, S, K, D)), dtype) for _ in range(2))
  filled = np.array([[10], [3]])
  slots = np.arange(S)[None]
  cache_pos = np.where(slots < filled, slots - np.array([[2], [0]]), EMPTY_POSITION)
  cache_pos[0, :2] = EMPTY_POSITION  # row 0: two padding slots before its tokens
  cache_pos = jnp.asarray(cache_pos, jnp.int32)
  q_pos = jnp.asarray(np.arange(new_tokens)[None] + np.array([[8], [3]]), jnp.int32)
  args = (q, k_cache, v_cache, k_new, v_new, q_pos, cache_pos, q_pos)
  expect = cached_gqa_attention(*args)
  got = jax.jit(lambda *a: blockwise_cached_gqa_attention(*a, block_q=2, block_k=8))(*args)
  assert_close(got, expect, dtype=DTYPE_NAME[dtype])


@pytest.mark.parametrize("kind", ["left_padding", "packed"])
def test_model_logits_and_gradients_equal_across_impls(kind):
  """The whole model (scanned stack, remat) with attention_impl xla vs blockwise."""
  from m1jax.model import MiniMaxM1ForCausalLM
  from tests.helpers import random_ids, random_params
  cfg = tiny_config((0, 1, 0, 1), remat=True)
  params = random_params(cfg, 0)
  ids = random_ids(1, B, T)
  pos, kpos, seg = _masks(kind)
  kwargs = (dict(token_mask_BT=kpos != EMPTY_POSITION) if seg is None
            else dict(positions_BT=pos, segment_ids_BT=seg))
  results = {}
  for impl in ("xla", "blockwise"):
    model = MiniMaxM1ForCausalLM(cfg.replace(attention_impl=impl))
    f = lambda p: model.apply({"params": p}, ids, **kwargs).logits
    logits, vjp = jax.vjp(f, params)
    results[impl] = (logits, vjp(jnp.cos(logits))[0])
  assert_close(results["blockwise"][0], results["xla"][0], name="logits")
  for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(results["blockwise"][1]),
                          jax.tree.leaves(results["xla"][1])):
    assert_close(a, e, name=jax.tree_util.keystr(path))


# ------------------------------------------------------------------ selection


def test_auto_is_blockwise_on_cpu_and_explicit_names_pass_through():
  kw = dict(dtype=jnp.bfloat16, seq_len=1024, head_dim=128, cached=False)
  assert attention_impl.resolve("auto", **kw) == "blockwise"
  assert attention_impl.resolve("xla", **kw) == "xla"
  assert attention_impl.resolve("blockwise", **kw) == "blockwise"
  assert tiny_config().attention_impl == "auto"


def test_auto_picks_the_kernel_of_the_platform_compiled_for():
  kw = dict(dtype=jnp.bfloat16, head_dim=128, cached=False)
  assert attention_impl.resolve("auto", seq_len=1024, platform="tpu", **kw) == "splash"
  assert attention_impl.resolve("auto", seq_len=1000, platform="tpu", **kw) == "blockwise"
  assert attention_impl.resolve("auto", seq_len=1000, platform="gpu", **kw) == "cudnn"
  assert attention_impl.resolve("auto", seq_len=1024, platform="gpu", dtype=jnp.float32,
                                head_dim=128, cached=False) == "blockwise"
  assert attention_impl.resolve("auto", seq_len=1024, platform="tpu", dtype=jnp.bfloat16,
                                head_dim=128, cached=True) == "blockwise"


def test_unknown_impl_names_the_valid_ones():
  with pytest.raises(ValueError, match="flash.*auto, xla, blockwise, cudnn, splash"):
    attention_impl.resolve("flash", dtype=jnp.float32, seq_len=8, head_dim=8, cached=False)
  with pytest.raises(ValueError, match="attention_impl.*'flash'.*'blockwise'"):
    tiny_config(attention_impl="flash")


@pytest.mark.parametrize("impl,needs", [("splash", "tpu"), ("cudnn", "gpu")])
def test_kernels_requested_off_their_platform_raise_naming_it(impl, needs):
  with pytest.raises(ValueError, match=f"runs on {needs} only.*platform 'cpu'"):
    attention_impl.resolve(impl, dtype=jnp.bfloat16, seq_len=1024, head_dim=128, cached=False)
  # Through the model as well: the layer resolves when traced.
  from m1jax.model import MiniMaxM1ForCausalLM
  from tests.helpers import random_ids
  model = MiniMaxM1ForCausalLM(tiny_config(attention_impl=impl))
  with pytest.raises(ValueError, match=f"runs on {needs} only.*platform 'cpu'"):
    jax.eval_shape(model.init, jax.random.key(0), random_ids(0, 1, 8))


def test_kernel_shape_limits_raise_clearly():
  with pytest.raises(ValueError, match="multiple of 128.*seq_len=1000"):
    attention_impl.resolve("splash", dtype=jnp.bfloat16, seq_len=1000, head_dim=128,
                           cached=False, platform="tpu")
  with pytest.raises(ValueError, match="bfloat16/float16.*float32"):
    attention_impl.resolve("cudnn", dtype=jnp.float32, seq_len=1024, head_dim=128,
                           cached=False, platform="gpu")
