"""Analytic FLOPs of a ModelConfig: training per token, and decode per generated token.

Counted from the architecture (docs/MODEL.md §4-§7), never from a built model, so the trainer's
MFU and the pod planner can call these on any config at no cost.

Conventions and assumptions (each is a choice; the numbers depend on them):
  * A matmul of [n, a] by [a, b] costs 2·n·a·b FLOPs (one multiply and one add per term).
    Elementwise work (norms, SiLU, RoPE, the decay scalings, softmax exponentials, top-k) is
    not counted: it is O(width) per token next to the O(width²) matmuls.
  * Weights a token passes through ("active" params, `matmul_params`): every attention
    projection, the router, R of the E experts (three [M,F]-sized matrices each) and the LM
    head. The embedding is a lookup, not a matmul, and is not counted.
  * Softmax attention: QKᵀ and PV each cost 2·D FLOPs per (query head, visible key). Causal:
    in a training sequence of T tokens, token t sees t+1 keys, (T+1)/2 on average.
  * Lightning attention, chunked training form (C = min(block_size, T)): the intra-chunk part
    is causal attention inside a chunk ((C+1)/2 visible keys on average, QKᵀ and PV), the
    inter-chunk part is Q·S (2·D² per head) and the state update Kᵀ·V (2·D² per head).
  * Lightning decode (the recurrent form): S = λS + kᵀv costs 2·D² per head (the outer
    product and the add; the λ scaling is elementwise) and o = qS 2·D² per head, whatever the
    context length.
  * Training = 3 × forward (the backward of a matmul is two matmuls of the same size).
    Rematerialisation is not counted: MFU counts the model's FLOPs, not the recomputed ones.
"""
from m1jax.config import FULL_ATTENTION, ModelConfig


def _layer_counts(config: ModelConfig) -> tuple[int, int]:
  """(lightning layers, softmax layers)."""
  softmax = sum(1 for t in config.attn_type_list if t == FULL_ATTENTION)
  return config.num_hidden_layers - softmax, softmax


def matmul_params(config: ModelConfig) -> dict[str, int]:
  """Weights one token multiplies, per component (the experts: R of E). Their sum times 2
  is the forward FLOPs per token outside attention's token-token terms."""
  c = config
  M, H, K, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
  lightning, softmax = _layer_counts(c)
  return {
      # qkv_proj M -> 3HD, output_gate M -> HD, out_proj HD -> M
      "lightning_attention": lightning * 5 * M * H * D,
      # q_proj M -> HD, k_proj and v_proj M -> KD, o_proj HD -> M
      "softmax_attention": softmax * (2 * M * H * D + 2 * M * K * D),
      "router": c.num_hidden_layers * M * c.num_local_experts,
      # w1, w3: M -> F and w2: F -> M for each of the R chosen experts
      "experts": c.num_hidden_layers * c.num_experts_per_tok * 3 * M * c.intermediate_size,
      "lm_head": M * c.vocab_size,
  }


def active_params(config: ModelConfig, *, include_lm_head: bool = False) -> int:
  """Active parameters per token. Without the LM head this is the M1 report's "45.9B
  activated" convention (docs/MODEL.md §3.3): the layers' weights plus the per-layer norm
  weights and the final norm, which scale rather than multiply and are not in
  `matmul_params`."""
  c = config
  lightning, _ = _layer_counts(c)
  counts = matmul_params(c)
  if not include_lm_head:
    counts.pop("lm_head")
  norms = (c.num_hidden_layers * 2 * c.hidden_size  # input and post-attention norms
           + lightning * c.num_attention_heads * c.head_dim  # lightning output norm
           + c.hidden_size)  # final norm
  return sum(counts.values()) + norms


def _check_length(name: str, value) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"flops: {name} must be an int >= 1; got {value!r}")
  return value


def forward_flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, float]:
  """Forward FLOPs per token of a training sequence of `seq_len` tokens, per component:
  "matmuls" (active weights, LM head included), "lightning" (chunked state math),
  "softmax" (causal token-token attention)."""
  seq_len = _check_length("seq_len", seq_len)
  c = config
  H, D = c.num_attention_heads, c.head_dim
  lightning, softmax = _layer_counts(c)
  chunk = min(c.block_size, seq_len)
  return {
      "matmuls": 2.0 * sum(matmul_params(c).values()),
      # intra-chunk QK^T and PV over (C+1)/2 keys, plus Q.S and K^T.V (2 D^2 each)
      "lightning": lightning * H * (4.0 * D * (chunk + 1) / 2 + 4.0 * D * D),
      "softmax": softmax * H * 4.0 * D * (seq_len + 1) / 2,
  }


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token (forward + backward = 3 × forward) at `seq_len`, for MFU."""
  return 3.0 * sum(forward_flops_per_token(config, seq_len).values())


def train_flops_per_step(config: ModelConfig, seq_len: int, batch_size: int) -> float:
  """Training FLOPs of one step of `batch_size` sequences of `seq_len` tokens."""
  return _check_length("batch_size", batch_size) * seq_len * train_flops_per_token(config,
                                                                                   seq_len)


def decode_flops_per_token(config: ModelConfig, context_len: int) -> dict[str, float]:
  """FLOPs to generate one token that sees `context_len` tokens (itself included: the prompt
  plus the tokens generated so far), per component. Lightning layers cost the same at any
  context; the softmax layers' QKᵀ and PV grow linearly with it."""
  context_len = _check_length("context_len", context_len)
  c = config
  H, D = c.num_attention_heads, c.head_dim
  lightning, softmax = _layer_counts(c)
  return {
      "matmuls": 2.0 * sum(matmul_params(c).values()),
      "lightning": lightning * H * 4.0 * D * D,
      "softmax": softmax * H * 4.0 * D * context_len,
  }
