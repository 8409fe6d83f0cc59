"""Small-token MoE dispatch: gather only the selected experts' weights, then batched
mat-vecs (docs/MODEL.md §7).

When a call routes fewer (token, expert) assignments than there are experts (N*R <= E,
e.g. one decode token with top-2 of 8 experts), the sorted grouped-matmul dispatch of
m1jax/layers/moe.py still reads every expert's weights and pays an argsort, a row gather
and a scatter for a handful of rows. Gathering the N*R selected [M, F] matrices reads
R/E of the weights and needs no sort: each assignment is a plain mat-vec. The result is
the same function (no capacity, no drop); only the float summation order of each dot may
differ. SparseMoE chooses it by the static token count (moe.swiglu), and
tests/layers/test_moe_gathered.py compares it with the dense reference and the sorted
dispatch, forward and gradient.
"""
import jax
import jax.numpy as jnp


def use_gathered(num_tokens: int, top_k: int, num_experts: int) -> bool:
  """Static choice: gather when the assignments do not outnumber the experts."""
  return num_tokens * top_k <= num_experts


def swiglu_gathered(x_NM, w1_EMF, w3_EMF, w2_EFM, weights_NR, experts_NR):
  """SwiGLU experts on N tokens through the N*R gathered expert matrices."""
  if experts_NR.shape != weights_NR.shape or experts_NR.shape[0] != x_NM.shape[0]:
    raise ValueError(f"experts_NR {experts_NR.shape} and weights_NR {weights_NR.shape} must "
                     f"both be [N, R] with N = x_NM.shape[0] = {x_NM.shape[0]}")
  dtype = x_NM.dtype
  # One gather per routing slot r, each [N, M, F] in the weights' own layout: a plain copy
  # of whole expert matrices feeding a batched mat-vec. Gathering all R at once as
  # [N, R, M, F] made XLA:CPU re-lay the weights out as [M, R*F] for one wider mat-vec, a
  # transposing copy that cost ~25% of a CPU decode step (WORKSPACE_NOTES.md, issue 16).
  # Gather first, cast after: only the selected matrices are converted.
  y_NRM = []
  for r in range(experts_NR.shape[1]):
    e_N = experts_NR[:, r]
    gate_NF = jnp.einsum("nm,nmf->nf", x_NM, w1_EMF[e_N].astype(dtype))
    up_NF = jnp.einsum("nm,nmf->nf", x_NM, w3_EMF[e_N].astype(dtype))
    y_NRM.append(jnp.einsum("nf,nfm->nm", jax.nn.silu(gate_NF) * up_NF,
                            w2_EFM[e_N].astype(dtype)))
  y_NRM = jnp.stack(y_NRM, axis=1)
  # Combine in float32 like the other dispatches (fp32 router weights).
  return jnp.einsum("nr,nrm->nm", weights_NR, y_NRM,
                    preferred_element_type=jnp.float32).astype(dtype)
