"""Writes a synthetic HF checkpoint with the release's key layout at reduced widths.

  python -m experiments.make_synthetic_hf --out=/tmp/synthetic_hf --layers=8

Same structure as MiniMax-M1 (configs/minimax_m1_456b.py): 32 experts, top-2, the 7 lightning
+ 1 softmax layer pattern, GQA 8:1, partial RoPE, fp32 routers, per-expert keys in
remote-code (`minimax_m1`) dialect shards; only the widths are scaled. Weights are random bf16
(N(0, 0.02); norms ~1), generated one param at a time, so writing it needs no more memory
than one layer's stacked experts. The defaults give ~4 GB at 8 layers, with a largest
per-layer stacked expert tensor of 32 x 1536 x 1536 bf16 = 151 MB.
"""
import os

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_LAYERS = flags.DEFINE_integer("layers", 8, "Depth (the 7+1 pattern, repeated/truncated).")
_HIDDEN = flags.DEFINE_integer("hidden", 1536, "hidden_size M (release: 6144).")
_FFN = flags.DEFINE_integer("ffn", 1536, "Expert intermediate_size F (release: 9216).")
_HEADS = flags.DEFINE_integer("heads", 24, "Attention heads H (release: 64).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "head_dim D (release: 128).")
_VOCAB = flags.DEFINE_integer("vocab", 32768, "vocab_size V (release: 200064).")
_SHARD = flags.DEFINE_string("max_shard_size", "1GB", "Bytes per shard.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")


def synthetic_config(layers: int, hidden: int, ffn: int, heads: int, head_dim: int,
                     vocab: int):
  """The release's ModelConfig with these widths and depth (and DeepNorm alpha for it)."""
  from configs import minimax_m1_456b
  from m1jax.config import ModelConfig
  model = minimax_m1_456b.get_config().model.to_dict()
  pattern = list(model["attn_type_list"])
  alpha = (2 * layers) ** 0.25
  model.update(
      num_hidden_layers=layers, attn_type_list=(pattern * (layers // len(pattern) + 1))[:layers],
      hidden_size=hidden, intermediate_size=ffn, num_attention_heads=heads,
      num_key_value_heads=max(1, heads // 8), head_dim=head_dim, rotary_dim=head_dim // 2,
      vocab_size=vocab, layernorm_full_attention_alpha=alpha,
      layernorm_linear_attention_alpha=alpha, layernorm_mlp_alpha=alpha)
  return ModelConfig.from_dict(model)


class RandomSource:
  """ParamSource (m1jax.hf.exporting) of random bf16 weights, made on request."""

  def __init__(self, config, seed: int):
    import numpy as np
    self.config, self._rng, self._np = config, np.random.default_rng(seed), np

  def get(self, param):
    np = self._np
    shape = param.shape(self.config)
    if param.path[-1] == "scale":
      return self._rng.uniform(0.5, 1.5, shape).astype(np.float32)
    out = np.empty(shape, np.float32)
    self._rng.standard_normal(out=out, dtype=np.float32)
    out *= self.config.initializer_range
    return out


def make_synthetic(out: str, layers: int, hidden: int = 1536, ffn: int = 1536, heads: int = 24,
                   head_dim: int = 64, vocab: int = 32768, max_shard_size: str = "1GB",
                   seed: int = 0) -> str:
  from m1jax.hf.exporting import write_hf_checkpoint
  config = synthetic_config(layers, hidden, ffn, heads, head_dim, vocab)
  return write_hf_checkpoint(RandomSource(config, seed), out, dialect="minimax_m1",
                             dtype="bfloat16", max_shard_size=max_shard_size, progress=True)


def main(argv):
  del argv
  out = make_synthetic(_OUT.value, _LAYERS.value, _HIDDEN.value, _FFN.value, _HEADS.value,
                       _HEAD_DIM.value, _VOCAB.value, _SHARD.value, _SEED.value)
  size = sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))
  print(f"wrote {out}: {size / 1e9:.2f} GB")


if __name__ == "__main__":
  app.run(main)
