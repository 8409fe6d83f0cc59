"""Sparse MoE block: float32 softmax router -> top-k -> renormalise; SwiGLU experts
(docs/MODEL.md §7).

Two dispatch paths compute the same function:
  * sorted (moe_impl "auto", the default, "ragged", "chunked", "megablox"): dropless; sort the
    A = N*R (token, expert) assignments by expert, run the three expert matmuls as grouped
    matmuls (m1jax.ops.grouped_matmul; the moe_impl picks its implementation: "ragged" is
    jax.lax.ragged_dot, "auto" the measured-fastest for the platform), unsort, combine;
  * "dense": every expert on every token, then a one-hot-weighted sum. O(E) compute; the
    readable reference the sorted path is tested against.
When the current mesh splits the experts (an `expert` axis > 1), SparseMoE dispatches with
expert parallelism instead (m1jax/layers/moe_ep.py); otherwise it runs one of the above.
The block also returns the per-layer sums the Switch load-balancing loss needs
(m1jax.losses.load_balancing_loss), so the loss can be formed over all layers jointly, as
the reference does, without materialising every layer's router logits.
"""
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from m1jax.config import ModelConfig
from m1jax.layers import moe_ep
from m1jax.layers import moe_gathered
from m1jax.layers import params as lp
from m1jax.ops import grouped_matmul_chunked as chunked
from m1jax.ops.grouped_matmul import grouped_matmul, resolve

# moe_impl -> m1jax.ops.grouped_matmul impl, for the sorted dispatch ("dense" is not sorted).
GROUPED_MATMUL_IMPL = {"auto": "auto", "ragged": "ragged_dot", "chunked": "chunked",
                       "megablox": "megablox"}


class RouterStats(NamedTuple):
  """Per-layer sums over (unmasked) tokens, for the load-balancing loss.

  selected_E: how many top-k slots chose each expert (sums to R * tokens).
  prob_E:     sum of the full softmax router probabilities per expert.
  tokens:     number of tokens counted (scalar).
  dropped:    top-k assignments of counted tokens that no expert computed (int32 scalar):
              only the padded expert-parallel exchange drops (m1jax/layers/moe_ep.py).
  """
  selected_E: jax.Array
  prob_E: jax.Array
  tokens: jax.Array
  dropped: jax.Array | int = 0


def route(x_NM: jax.Array, router_ME: jax.Array, top_k: int):
  """Router in float32. Returns (probs_NE, weights_NR renormalised, experts_NR int32)."""
  logits_NE = jnp.dot(x_NM.astype(jnp.float32), router_ME.astype(jnp.float32),
                      precision=jax.lax.Precision.HIGHEST)
  probs_NE = jax.nn.softmax(logits_NE, axis=-1)
  top_probs_NR, experts_NR = jax.lax.top_k(probs_NE, top_k)
  weights_NR = top_probs_NR / jnp.sum(top_probs_NR, axis=-1, keepdims=True)
  return probs_NE, weights_NR, experts_NR.astype(jnp.int32)


def router_stats(probs_NE: jax.Array, experts_NR: jax.Array,
                 token_mask_N: jax.Array | None) -> RouterStats:
  num_experts = probs_NE.shape[-1]
  mask_N = (jnp.ones(probs_NE.shape[:1], jnp.float32) if token_mask_N is None
            else token_mask_N.astype(jnp.float32))
  one_hot_NRE = jax.nn.one_hot(experts_NR, num_experts, dtype=jnp.float32)
  return RouterStats(
      selected_E=jnp.einsum("nre,n->e", one_hot_NRE, mask_N),
      prob_E=jnp.einsum("ne,n->e", probs_NE, mask_N),
      tokens=jnp.sum(mask_N),
      dropped=jnp.zeros((), jnp.int32))


def swiglu_dense(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR):
  """Reference dispatch: all experts on all tokens, combined with one-hot top-k weights."""
  dtype = x_NM.dtype
  gate_ENF = jnp.einsum("nm,emf->enf", x_NM, w1_EMF.astype(dtype))
  up_ENF = jnp.einsum("nm,emf->enf", x_NM, w3_EMF.astype(dtype))
  y_ENM = jnp.einsum("enf,efm->enm", jax.nn.silu(gate_ENF) * up_ENF, w2_EFM.astype(dtype))
  combine_NE = jnp.einsum("nr,nre->ne", weights_NR,
                          jax.nn.one_hot(experts_NR, w1_EMF.shape[0], dtype=jnp.float32))
  # Combine in float32 like the reference (fp32 router weights times expert outputs).
  return jnp.einsum("ne,enm->nm", combine_NE, y_ENM,
                    preferred_element_type=jnp.float32).astype(dtype)


def expert_ffn_grouped(x_AM, w1_EMF, w3_EMF, w2_EFM, group_sizes_E, impl: str = "auto"):
  """SwiGLU of rows already sorted by expert: the three grouped matmuls. The single call site
  of m1jax.ops.grouped_matmul for every MoE dispatch (local and expert-parallel); `impl` is a
  grouped_matmul implementation ("auto": the platform's fastest). Rows past sum(group_sizes)
  come out zero."""
  dtype = x_AM.dtype
  w1_EMF, w3_EMF, w2_EFM = (w.astype(dtype) for w in (w1_EMF, w3_EMF, w2_EFM))
  if resolve(impl, dtype) == "chunked":
    # One chunk layout for all three matmuls: the [Z, C, F] hidden never leaves it.
    layout = chunked.chunk_layout(group_sizes_E, x_AM.shape[0])
    x_ZCM = chunked.to_chunks(x_AM, layout)
    gate_ZCF = chunked.chunked_matmul(x_ZCM, w1_EMF, layout)
    up_ZCF = chunked.chunked_matmul(x_ZCM, w3_EMF, layout)
    y_ZCM = chunked.chunked_matmul(jax.nn.silu(gate_ZCF) * up_ZCF, w2_EFM, layout)
    return chunked.from_chunks(y_ZCM, layout)
  gate_AF = grouped_matmul(x_AM, w1_EMF, group_sizes_E, impl)
  up_AF = grouped_matmul(x_AM, w3_EMF, group_sizes_E, impl)
  return grouped_matmul(jax.nn.silu(gate_AF) * up_AF, w2_EFM, group_sizes_E, impl)


def swiglu_ragged(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR,
                  impl: str = "ragged_dot"):
  """Dropless sorted dispatch with grouped matmuls (expert_ffn_grouped; `impl` as there, the
  default being the ragged_dot this function is named after)."""
  N, M = x_NM.shape
  E, R, dtype = w1_EMF.shape[0], experts_NR.shape[1], x_NM.dtype
  experts_A = experts_NR.reshape(-1)                           # assignment a = n*R + r
  order_A = jnp.argsort(experts_A, stable=True)
  x_AM = x_NM[order_A // R]                                    # grouped by expert
  # Experts that receive no token get a zero-size group; the grouped matmul handles that.
  group_sizes_E = jnp.bincount(experts_A, length=E).astype(jnp.int32)
  y_AM = expert_ffn_grouped(x_AM, w1_EMF, w3_EMF, w2_EFM, group_sizes_E, impl)
  # Unsort: scatter each sorted row back to its assignment slot.
  y_NRM = jnp.zeros_like(y_AM).at[order_A].set(y_AM).reshape(N, R, M)
  return jnp.einsum("nr,nrm->nm", weights_NR, y_NRM,
                    preferred_element_type=jnp.float32).astype(dtype)


def swiglu(moe_impl: str, x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR):
  """The dispatch ModelConfig.moe_impl names (m1jax.config.MOE_IMPLS)."""
  if moe_impl == "dense":
    return swiglu_dense(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR)
  # "auto" at a handful of tokens (decode): gather the selected experts' weights instead of
  # sorting; the explicit impls stay as named (they are the references it is tested against).
  if moe_impl == "auto" and moe_gathered.use_gathered(x_NM.shape[0], experts_NR.shape[1],
                                                      w1_EMF.shape[0]):
    return moe_gathered.swiglu_gathered(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR)
  return swiglu_ragged(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR,
                       GROUPED_MATMUL_IMPL[moe_impl])


class SparseMoE(nn.Module):
  """Top-k SwiGLU mixture of experts over [B,T,M]; returns (y_BTM, RouterStats)."""
  config: ModelConfig

  @nn.compact
  def __call__(self, h_BTM: jax.Array, token_mask_BT: jax.Array | None = None):
    cfg = self.config
    M, E, F = cfg.hidden_size, cfg.num_local_experts, cfg.intermediate_size
    dtype, pdtype, init = lp.compute_dtype(cfg), lp.param_dtype(cfg), lp.kernel_init(cfg)
    # The router stays float32 whatever param_dtype is (stored fp32 in the release, §1).
    router = lp.logical_param(self, "router", init, (M, E), (lp.EMBED, None), jnp.float32)
    w1 = lp.logical_param(self, "w1", init, (E, M, F), (lp.EXPERTS, lp.EMBED, lp.MLP), pdtype)
    w3 = lp.logical_param(self, "w3", init, (E, M, F), (lp.EXPERTS, lp.EMBED, lp.MLP), pdtype)
    w2 = lp.logical_param(self, "w2", init, (E, F, M), (lp.EXPERTS, lp.MLP, lp.EMBED), pdtype)
    B, T, _ = h_BTM.shape
    h_BTM = lp.constrain(h_BTM, (lp.BATCH, lp.LENGTH, lp.EMBED))
    # model.init traces 1-row dummies that need not split over the mesh; only shapes matter.
    if moe_ep.expert_parallel_size() > 1 and not self.is_initializing():
      # Experts split over the mesh: shard_map dispatch (the experts always run grouped).
      return moe_ep.sparse_moe_ep(h_BTM, token_mask_BT, router, w1, w3, w2,
                                  top_k=cfg.num_experts_per_tok, dtype=dtype,
                                  exchange=cfg.moe_all_to_all,
                                  capacity_factor=cfg.moe_capacity_factor)
    x_NM = h_BTM.reshape(B * T, M)
    probs_NE, weights_NR, experts_NR = route(x_NM, router, cfg.num_experts_per_tok)
    mask_N = None if token_mask_BT is None else token_mask_BT.reshape(B * T)
    y_NM = swiglu(cfg.moe_impl, x_NM.astype(dtype), w1, w3, w2, weights_NR, experts_NR)
    y_BTM = lp.constrain(y_NM.reshape(B, T, M), (lp.BATCH, lp.LENGTH, lp.EMBED))
    return y_BTM, router_stats(probs_NE, experts_NR, mask_N)
