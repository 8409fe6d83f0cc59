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
  # Gather first, cast after: only the selected matrices are converted.
  w1_NRMF = w1_EMF[experts_NR].astype(dtype)
  w3_NRMF = w3_EMF[experts_NR].astype(dtype)
  w2_NRFM = w2_EFM[experts_NR].astype(dtype)
  gate_NRF = jnp.einsum("nm,nrmf->nrf", x_NM, w1_NRMF)
  up_NRF = jnp.einsum("nm,nrmf->nrf", x_NM, w3_NRMF)
  y_NRM = jnp.einsum("nrf,nrfm->nrm", jax.nn.silu(gate_NRF) * up_NRF, w2_NRFM)
  # Combine in float32 like the other dispatches (fp32 router weights).
  return jnp.einsum("nr,nrm->nm", weights_NR, y_NRM,
                    preferred_element_type=jnp.float32).astype(dtype)
