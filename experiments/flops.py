"""FLOPs per generated token vs generation length: MiniMax-M1 against DeepSeek-R1 (the M1
report's Fig. 1, right).

  python -m experiments.flops
  python -m experiments.flops --max_len=262144 --points=32768,65536,102400

Writes benchmarks/results/flops_m1_vs_r1.json and .png; the last stdout line is JSON with the
M1/R1 ratios at the --points (default 32K, 64K, 100K with K = 1024).

What is counted (analytic, no model is built):
  * Decode only: a generation of N tokens with no prompt, the n-th token seeing n tokens
    (itself included). "Per token" is the FLOPs of the N-th token; "cumulative" is the sum
    over tokens 1..N (the whole generation). The report's figure plots FLOPs against
    generation length without saying which; the per-token form matches its numbers (see
    WORKSPACE_NOTES.md, issue 16) and is the headline here, the cumulative one is recorded
    beside it.
  * M1: m1jax.flops.decode_flops_per_token on configs/minimax_m1_456b.py: 2 FLOPs per active
    weight (attention projections, router, 2 of 32 experts, LM head), 4·D² per head per
    lightning layer (state update and readout, independent of n), 4·n·H·D per softmax layer
    (QKᵀ and PV over the n keys).
  * DeepSeek-R1 = the DeepSeek-V3 architecture. Facts from the DeepSeek-V3 config.json
    (deepseek-ai/DeepSeek-V3 on the HF hub, the same for R1): hidden 7168, 61 layers of which
    the first 3 dense (FFN 18432) and 58 MoE (256 routed experts of width 2048, top-8, plus 1
    shared expert), 128 heads, MLA with q_lora_rank 1536, kv_lora_rank 512,
    qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128, vocab 129280, untied head.
    The multi-token-prediction module is not used for generation and is not counted. These
    give 36.6B active weights per token including the 0.9B head, DeepSeek's own figure
    ("37B activated"; 36.6B incl. 0.9B head in the V3 weights README).
  * R1's attention per (head, cached key), three accountings (`R1_ATTENTION`):
      - "mha128": MLA counted as multi-head attention of head dim 128 (QKᵀ over the 128
        content dims, PV over 128): 2·(128+128). Headline: it reproduces the report (~25% at
        100K).
      - "mla_expanded": the exact count of MLA with K/V up-projected and cached per head:
        QKᵀ over 128 content + 64 decoupled-RoPE dims, PV over 128: 2·(192+128).
      - "mla_absorbed": weight-absorbed MLA attending in the 512-dim latent (the usual decode
        kernel): QKᵀ over 512+64, PV over 512: 2·(576+512). The absorbed projections cost
        exactly the kv_b weights per token, so the weight term is unchanged.
    Elementwise work (softmax, norms, RoPE, routing) is not counted for either model.
"""
import dataclasses
import json
import os

from absl import app, flags

K_TOKENS = 1024
DEFAULT_POINTS = (32 * K_TOKENS, 64 * K_TOKENS, 100 * K_TOKENS)
R1_ATTENTION = ("mha128", "mla_expanded", "mla_absorbed")
HEADLINE_ATTENTION = "mha128"

_MAX_LEN = flags.DEFINE_integer("max_len", 128 * K_TOKENS, "Longest generation plotted.")
_POINTS = flags.DEFINE_list("points", [str(p) for p in DEFAULT_POINTS],
                            "Generation lengths whose ratios the last line reports.")
_OUT_JSON = flags.DEFINE_string("out_json", "benchmarks/results/flops_m1_vs_r1.json", "JSON.")
_OUT_PNG = flags.DEFINE_string("out_png", "benchmarks/results/flops_m1_vs_r1.png", "Plot.")


@dataclasses.dataclass(frozen=True)
class MLAMoESpec:
  """The DeepSeek-V3 / R1 architecture (config.json facts; see the module docstring)."""
  hidden_size: int = 7168
  num_layers: int = 61
  dense_layers: int = 3
  dense_intermediate: int = 18432
  moe_intermediate: int = 2048
  routed_experts: int = 256
  shared_experts: int = 1
  experts_per_token: int = 8
  num_heads: int = 128
  q_lora_rank: int = 1536
  kv_lora_rank: int = 512
  qk_nope_dim: int = 128
  qk_rope_dim: int = 64
  v_dim: int = 128
  vocab_size: int = 129280


DEEPSEEK_R1 = MLAMoESpec()


def check_length(name: str, n) -> int:
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"experiments.flops: {name} must be a positive number of tokens "
                     f"(an int >= 1); got {n!r}")
  return n


def r1_matmul_params(s: MLAMoESpec = DEEPSEEK_R1) -> dict[str, int]:
  """Weights one token multiplies, per component."""
  M, H = s.hidden_size, s.num_heads
  mla = (M * s.q_lora_rank  # q down-projection
         + s.q_lora_rank * H * (s.qk_nope_dim + s.qk_rope_dim)  # q up-projection
         + M * (s.kv_lora_rank + s.qk_rope_dim)  # kv down-projection + shared RoPE key
         + s.kv_lora_rank * H * (s.qk_nope_dim + s.v_dim)  # kv up-projection
         + H * s.v_dim * M)  # o_proj
  moe_layers = s.num_layers - s.dense_layers
  return {
      "attention": s.num_layers * mla,
      "dense_ffn": s.dense_layers * 3 * M * s.dense_intermediate,
      "router": moe_layers * M * s.routed_experts,
      "experts": moe_layers * (s.experts_per_token + s.shared_experts) * 3 * M
                 * s.moe_intermediate,
      "lm_head": M * s.vocab_size,
  }


def r1_attention_flops_per_key(s: MLAMoESpec, attention: str) -> int:
  """FLOPs per layer per cached key (all heads) under one of R1_ATTENTION."""
  if attention == "mha128":
    per_head = 2 * (s.qk_nope_dim + s.v_dim)
  elif attention == "mla_expanded":
    per_head = 2 * (s.qk_nope_dim + s.qk_rope_dim + s.v_dim)
  elif attention == "mla_absorbed":
    per_head = 2 * (s.kv_lora_rank + s.qk_rope_dim + s.kv_lora_rank)
  else:
    raise ValueError(f"experiments.flops: unknown R1 attention accounting {attention!r}; "
                     f"expected one of {R1_ATTENTION}")
  return s.num_heads * per_head


def r1_decode_flops_per_token(context_len: int, attention: str = HEADLINE_ATTENTION,
                              s: MLAMoESpec = DEEPSEEK_R1) -> dict[str, float]:
  """FLOPs to generate one token seeing `context_len` tokens (itself included)."""
  context_len = check_length("context_len", context_len)
  return {"matmuls": 2.0 * sum(r1_matmul_params(s).values()),
          "attention": float(s.num_layers * r1_attention_flops_per_key(s, attention)
                             * context_len)}


def m1_config():
  from configs import minimax_m1_456b
  from m1jax.config import ModelConfig
  return ModelConfig.from_dict(minimax_m1_456b.get_config().model.to_dict())


def per_token_curves(max_len: int, m1=None) -> dict:
  """{"M1": [...], "R1/<attention>": [...]}: FLOPs of the n-th token, n = 1..max_len."""
  from m1jax.flops import decode_flops_per_token
  max_len = check_length("max_len", max_len)
  m1 = m1_config() if m1 is None else m1
  lengths = range(1, max_len + 1)
  curves = {"M1": [sum(decode_flops_per_token(m1, n).values()) for n in lengths]}
  for attention in R1_ATTENTION:
    curves[f"R1/{attention}"] = [sum(r1_decode_flops_per_token(n, attention).values())
                                 for n in lengths]
  return curves


def cumulative(curve: list) -> list:
  """FLOPs of the whole generation of 1..N tokens."""
  out, total = [], 0.0
  for value in curve:
    total += value
    out.append(total)
  return out


def ratios(curves: dict, points, form: str) -> dict:
  """M1 / R1 at each point, for every R1 accounting; form "per_token" or "cumulative"."""
  get = (lambda c: c) if form == "per_token" else cumulative
  m1 = get(curves["M1"])
  out = {}
  for name, curve in curves.items():
    if name == "M1":
      continue
    r1 = get(curve)
    out[name] = {str(p): m1[p - 1] / r1[p - 1] for p in points}
  return out


def _plot(curves: dict, points, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")  # no display on servers and CI
  import matplotlib.pyplot as plt

  n = range(1, len(curves["M1"]) + 1)
  x = [v / K_TOKENS for v in n]
  fig, (ax_tok, ax_cum) = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"M1": ("MiniMax-M1", "-", 2.2), f"R1/{HEADLINE_ATTENTION}":
            ("DeepSeek-R1 (MLA as MHA, head dim 128)", "-", 2.2),
            "R1/mla_expanded": ("DeepSeek-R1 (MLA, q·k 192 dims)", "--", 1.2)}
  # The absorbed-MLA curve (in the JSON) is 3-4x higher still and would flatten the others.
  for name, (label, style, width) in styles.items():
    ax_tok.plot(x, [v / 1e9 for v in curves[name]], style, lw=width, label=label)
    ax_cum.plot(x, [v / 1e15 for v in cumulative(curves[name])], style, lw=width, label=label)
  head = ratios(curves, points, "per_token")[f"R1/{HEADLINE_ATTENTION}"]
  for p in points:
    ax_tok.axvline(p / K_TOKENS, color="grey", lw=0.5)
    ax_tok.annotate(f"{100 * head[str(p)]:.0f}%", (p / K_TOKENS, curves["M1"][p - 1] / 1e9),
                    textcoords="offset points", xytext=(3, 8), fontsize=8)
  ax_tok.set_title("FLOPs of the n-th generated token (M1 / R1 annotated)")
  ax_tok.set_ylabel("GFLOPs per token")
  ax_cum.set_title("FLOPs of the whole generation")
  ax_cum.set_ylabel("PFLOPs")
  for ax in (ax_tok, ax_cum):
    ax.set_xlabel("generation length (K tokens, K = 1024)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
  ax_tok.legend(fontsize=8)
  fig.suptitle("Decode FLOPs, no prompt; headline: per-token, R1 attention as MHA of head dim "
               "128", fontsize=9)
  fig.tight_layout()
  tmp = f"{path}.tmp-{os.getpid()}.png"
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  os.replace(tmp, path)


def parse_points(values) -> list[int]:
  points = []
  for v in values:
    try:
      n = int(v)
    except ValueError:
      raise ValueError(f"experiments.flops: --points entry {v!r} is not an integer") from None
    points.append(check_length("--points entry", n))
  return points


def main(argv):
  del argv
  points = parse_points(_POINTS.value)
  max_len = check_length("--max_len", _MAX_LEN.value)
  if max(points) > max_len:
    raise ValueError(f"experiments.flops: --points reaches {max(points)} tokens, beyond "
                     f"--max_len={max_len}")
  from m1jax.hf.outputs import write_json  # after the checks: bad input fails fast
  curves = per_token_curves(max_len)
  result = {
      "what": "M1 / DeepSeek-R1 decode FLOPs vs generation length (M1 report Fig. 1 right)",
      "headline": {"form": "per_token", "r1_attention": HEADLINE_ATTENTION},
      "k_tokens": K_TOKENS,
      "ratios_per_token": ratios(curves, points, "per_token"),
      "ratios_cumulative": ratios(curves, points, "cumulative"),
      "flops_per_token": {name: {str(p): curve[p - 1] for p in points}
                          for name, curve in curves.items()},
      "r1_active_params": sum(r1_matmul_params().values()),
  }
  os.makedirs(os.path.dirname(_OUT_JSON.value) or ".", exist_ok=True)
  write_json(_OUT_JSON.value, result)
  _plot(curves, points, _OUT_PNG.value)
  for form in ("per_token", "cumulative"):
    for name, by_point in result[f"ratios_{form}"].items():
      print(f"{form:10s} M1/{name:16s} " + "  ".join(
          f"{int(p) // K_TOKENS}K: {100 * r:5.1f}%" for p, r in by_point.items()))
  headline = result["ratios_per_token"][f"R1/{HEADLINE_ATTENTION}"]
  print(json.dumps({f"{int(p) // K_TOKENS}K" if int(p) % K_TOKENS == 0 else p: round(r, 4)
                    for p, r in headline.items()}))


if __name__ == "__main__":
  try:
    app.run(main)
  except ValueError as e:  # a usage error, not a crash: one clear line, exit status 2
    raise SystemExit(f"error: {e}") from None
