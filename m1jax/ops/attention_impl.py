"""Which softmax-attention implementation a call runs (ModelConfig.attention_impl).

  xla        m1jax.layers.softmax_attention: [B,H,T,S] fp32 logits (the reference).
  blockwise  m1jax.ops.blockwise_attention: pure-JAX flash attention, any platform.
  cudnn      m1jax.ops.cudnn_attention: cuDNN flash attention (GPU, bf16/fp16).
  splash     m1jax.ops.splash_attention: Pallas splash attention (TPU).
  auto       splash on TPU, cudnn on GPU when the call fits them, else blockwise.

The platform is the one being compiled FOR: the active abstract mesh's devices when a mesh
is set (an AOT compile for TPU from a CPU host), else jax.default_backend(). cudnn and splash
serve cache-free calls (training, scoring); a call with a KV cache runs blockwise under them.

Under a mesh that splits `sequence`, cache-free xla and blockwise calls run sequence-parallel
(m1jax/ops/softmax_attention_sp.py: queries stay local, K/V are all-gathered).
"""
import jax
import jax.numpy as jnp

from m1jax.config import ATTENTION_IMPLS
from m1jax.ops import cudnn_attention, splash_attention
from m1jax.ops.linear_attention_sp import sequence_shards
from m1jax.ops.softmax_attention_sp import SP_IMPLS, attend_sp


def lowering_platform() -> str:
  """"tpu", "gpu" or "cpu" (or another backend name) for the program being traced."""
  mesh = jax.sharding.get_abstract_mesh()
  platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
  return "gpu" if platform in ("cuda", "rocm") else platform


def resolve(impl: str, *, dtype, seq_len: int, head_dim: int, cached: bool,
            platform: str | None = None) -> str:
  """The concrete implementation ("xla", "blockwise", "cudnn" or "splash") for one call.

  Raises ValueError for an unknown name, and for cudnn / splash requested where they cannot
  run (the platform, dtype or shape is named).
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is unknown; valid: {', '.join(ATTENTION_IMPLS)}")
  if impl in ("xla", "blockwise"):
    return impl
  platform = platform or lowering_platform()
  fits = {"splash": platform == "tpu" and splash_attention.supported(seq_len, head_dim),
          "cudnn": platform == "gpu" and cudnn_attention.supported(dtype, head_dim)}
  if impl == "auto":
    if cached:
      return "blockwise"
    return next((name for name in ("splash", "cudnn") if fits[name]), "blockwise")
  needs = {"splash": ("tpu", f"seq_len a multiple of {splash_attention.SEQ_MULTIPLE} and "
                             f"head_dim a multiple of {splash_attention.HEAD_DIM_MULTIPLE}"),
           "cudnn": ("gpu", f"dtype bfloat16/float16 and head_dim <= "
                            f"{cudnn_attention.MAX_HEAD_DIM}, a multiple of 8")}[impl]
  if platform != needs[0]:
    raise ValueError(f"attention_impl={impl!r} runs on {needs[0]} only, but this program is "
                     f"compiled for platform {platform!r}; use 'blockwise' or 'auto'")
  if cached:
    return "blockwise"
  if not fits[impl]:
    raise ValueError(f"attention_impl={impl!r} needs {needs[1]}; got seq_len={seq_len}, "
                     f"head_dim={head_dim}, dtype={jax.numpy.dtype(dtype).name}")
  return impl


def attend(impl: str, q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT,
           segment_ids_BT=None, *, padded: bool = False, sequence_parallel: bool = True):
  """Cache-free causal GQA attention by `impl` (resolved here); [B,T,H,D].

  Arguments as causal_gqa_attention's (k_positions_BT carries padding as EMPTY_POSITION);
  padded: whether some keys may be padding (a token mask was given), for the kernels that
  mask by index and need the padding spelt out. sequence_parallel: False keeps one
  unsplit call even under a `sequence` mesh (model.init, whose dummy rows are short).
  """
  # Imported here: the layer module imports this one.
  from m1jax.layers.cache_info import EMPTY_POSITION
  from m1jax.layers.softmax_attention import causal_gqa_attention
  from m1jax.ops.blockwise_attention import blockwise_gqa_attention
  B, T, H, D = q_BTHD.shape
  name = resolve(impl, dtype=q_BTHD.dtype, seq_len=T, head_dim=D, cached=False)
  if sequence_parallel and name in SP_IMPLS and sequence_shards() > 1:
    return attend_sp(name, q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT,
                     segment_ids_BT)
  if name == "xla":
    return causal_gqa_attention(q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT,
                                segment_ids_BT, segment_ids_BT)
  if name == "blockwise":
    return blockwise_gqa_attention(q_BTHD, k_BTKD, v_BTKD, q_positions_BT, k_positions_BT,
                                   segment_ids_BT, segment_ids_BT)
  masked = padded or segment_ids_BT is not None
  if name == "cudnn":
    visible_BTS = None
    if masked:
      visible_BTS = k_positions_BT[:, None, :] <= q_positions_BT[:, :, None]
      if segment_ids_BT is not None:
        visible_BTS &= segment_ids_BT[:, None, :] == segment_ids_BT[:, :, None]
    return cudnn_attention.cudnn_gqa_attention(q_BTHD, k_BTKD, v_BTKD, visible_BTS)
  # splash: padding keys go to segment 0, which no real token has.
  real_BT = k_positions_BT != EMPTY_POSITION
  segments_BT = (jnp.ones((B, T), jnp.int32) if segment_ids_BT is None
                 else segment_ids_BT.astype(jnp.int32))
  return splash_attention.splash_gqa_attention(q_BTHD, k_BTKD, v_BTKD,
                                               jnp.where(real_BT, segments_BT, 0))


def attend_cached(impl: str, q_BTHD, k_cache_BSKD, v_cache_BSKD, k_new_BTKD, v_new_BTKD,
                  q_positions_BT, cache_positions_BS, new_positions_BT):
  """Attention of T new tokens over [cache ++ new] (cached_gqa_attention's arguments):
  blockwise unless `impl` is "xla", or T is 1. A decode step's logits are [B,H,1,S], already
  small, and cached_gqa_attention reads the cache in place where blockwise would re-lay it
  out in key chunks on every step."""
  from m1jax.layers.softmax_attention import cached_gqa_attention
  from m1jax.ops.blockwise_attention import blockwise_cached_gqa_attention
  B, T, H, D = q_BTHD.shape
  name = resolve(impl, dtype=q_BTHD.dtype, seq_len=T, head_dim=D, cached=True)
  fn = cached_gqa_attention if name == "xla" or T == 1 else blockwise_cached_gqa_attention
  return fn(q_BTHD, k_cache_BSKD, v_cache_BSKD, k_new_BTKD, v_new_BTKD, q_positions_BT,
            cache_positions_BS, new_positions_BT)
