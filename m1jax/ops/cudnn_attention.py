"""GPU softmax attention: cuDNN flash attention through jax.nn.dot_product_attention, which
takes GQA natively (K KV heads for H query heads, no repeat).

cuDNN masks causally by token index. Packed segments and padding keys (the layer's position
and segment mask) go in as a boolean [B,1,T,S] mask, which cuDNN turns into an additive bias:
one byte per (query, key) pair shared by all heads, instead of the XLA path's fp32 logits
per head. Without segments or padding only the causal flag is passed.
"""
import jax
import jax.numpy as jnp

DTYPES = (jnp.bfloat16, jnp.float16)
MAX_HEAD_DIM = 128


def supported(dtype, head_dim: int) -> bool:
  return jnp.dtype(dtype) in tuple(jnp.dtype(d) for d in DTYPES) and (
      head_dim <= MAX_HEAD_DIM and head_dim % 8 == 0)


def cudnn_gqa_attention(q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array,
                        visible_BTS: jax.Array | None = None) -> jax.Array:
  """Causal GQA attention of one cache-free call; [B,T,H,D]. visible_BTS: None for plain
  causal rows, else which keys each query may see (ANDed with causality)."""
  mask = None if visible_BTS is None else visible_BTS[:, None]
  return jax.nn.dot_product_attention(q_BTHD, k_BTKD, v_BTKD, mask=mask, is_causal=True,
                                      scale=q_BTHD.shape[-1]**-0.5, implementation="cudnn")
