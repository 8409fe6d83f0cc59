"""m1jax/flops.py: hand-checked counts on the tiny config, the active-parameter count against a
real model's params (jax.eval_shape), monotonicity and the errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from m1jax import flops
from m1jax.model import MiniMaxM1ForCausalLM
from tests.helpers import tiny_config

# tiny_config(): M 32, H 4, K 2, D 8, F 48, E 4, R 2, V 97, C 8; layers (lightning, softmax,
# lightning). Weights one token multiplies:
#   lightning 2 x 5MHD = 2 x 5120 = 10240;  softmax 2MHD + 2MKD = 2048 + 1024 = 3072
#   router 3 x ME = 384;  experts 3 x R x 3MF = 27648;  lm_head MV = 3104;  sum 44448.
TINY_MATMUL_PARAMS = 44448


def test_tiny_counts_by_hand():
  c = tiny_config()
  assert sum(flops.matmul_params(c).values()) == TINY_MATMUL_PARAMS
  fwd = flops.forward_flops_per_token(c, 4)
  # T 4, chunk 4: lightning 2 layers x 4 heads x (4 D (4+1)/2 + 4 D^2) = 8 x (80 + 256)
  # softmax 1 x 4 heads x 4 D (4+1)/2 = 320
  assert fwd == {"matmuls": 2 * TINY_MATMUL_PARAMS, "lightning": 2688, "softmax": 320}
  assert flops.train_flops_per_token(c, 4) == 3 * (88896 + 2688 + 320)
  assert flops.train_flops_per_step(c, 4, 3) == 3 * 4 * 3 * (88896 + 2688 + 320)
  # Decode at context 10: lightning 2 x 4 x 4 D^2 = 2048, softmax 4 x 4 D x 10 = 1280.
  assert flops.decode_flops_per_token(c, 10) == {"matmuls": 88896, "lightning": 2048,
                                                 "softmax": 1280}
  # The chunk is capped at block_size (8): T 100 uses (8+1)/2 keys per intra-chunk query.
  assert flops.forward_flops_per_token(c, 100)["lightning"] == 8 * (4 * 8 * 9 / 2 + 256)


@pytest.mark.parametrize("attn_types", [(0, 1, 0), (0, 0, 0, 1) * 2])
def test_active_params_match_the_model(attn_types):
  c = tiny_config(attn_types)
  model = MiniMaxM1ForCausalLM(c)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  total = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  M, E, R, F = c.hidden_size, c.num_local_experts, c.num_experts_per_tok, c.intermediate_size
  idle_experts = c.num_hidden_layers * (E - R) * 3 * M * F
  embedding = c.vocab_size * M
  assert flops.active_params(c, include_lm_head=True) + idle_experts + embedding == total
  assert (flops.active_params(c, include_lm_head=True) - flops.active_params(c)
          == M * c.vocab_size)


def test_release_active_params():
  from configs import minimax_m1_456b
  from m1jax import ModelConfig
  c = ModelConfig.from_dict(minimax_m1_456b.get_config().model.to_dict())
  # The M1 report's 45.9B activated (docs/MODEL.md §3.3), to the parameter.
  assert flops.active_params(c) == 45_944_920_064


def test_monotone_in_length():
  c = tiny_config()
  train = [flops.train_flops_per_token(c, t) for t in (1, 2, 8, 9, 64, 1000)]
  decode = [sum(flops.decode_flops_per_token(c, t).values()) for t in (1, 2, 64, 1000)]
  assert all(a < b for a, b in zip(train, train[1:]))
  assert all(a < b for a, b in zip(decode, decode[1:]))


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, None])
def test_bad_lengths(bad):
  c = tiny_config()
  with pytest.raises(ValueError, match="seq_len"):
    flops.train_flops_per_token(c, bad)
  with pytest.raises(ValueError, match="context_len"):
    flops.decode_flops_per_token(c, bad)
  with pytest.raises(ValueError, match="batch_size"):
    flops.train_flops_per_step(c, 4, bad)


# ------------------------------------------------------------------ experiments/flops.py
def test_r1_active_params_match_deepseek():
  from experiments import flops as fig
  # DeepSeek-V3 weights README: 36.6B activated per token, 0.9B of it the output head.
  params = fig.r1_matmul_params()
  assert sum(params.values()) == pytest.approx(36.6e9, rel=0.005)
  assert params["lm_head"] == pytest.approx(0.93e9, rel=0.01)
  # Per (layer, cached key), all 128 heads: 2 (128 + 128), 2 (192 + 128), 2 (576 + 512).
  assert [fig.r1_attention_flops_per_key(fig.DEEPSEEK_R1, a) for a in fig.R1_ATTENTION] == [
      128 * 512, 128 * 640, 128 * 2176]


def test_report_ratios():
  """M1 report §1 / Fig. 1 right: < 50% of R1's FLOPs at 64K generated tokens and about 25%
  (here: within 2 points) at 100K, in the per-token form with R1's headline accounting."""
  from experiments import flops as fig
  m1 = fig.m1_config()

  def ratio(n, attention=fig.HEADLINE_ATTENTION):
    return (sum(flops.decode_flops_per_token(m1, n).values())
            / sum(fig.r1_decode_flops_per_token(n, attention).values()))

  assert ratio(64 * 1024) < 0.5
  assert abs(ratio(100 * 1024) - 0.25) <= 0.02
  # The other accountings bracket it: the exact expanded MLA is a bit lower, absorbed far lower.
  assert ratio(100 * 1024, "mla_absorbed") < ratio(100 * 1024, "mla_expanded") < ratio(
      100 * 1024)
  # M1 is the costlier model per token at short lengths (47B vs 37B active weights).
  assert ratio(1) > 1


def test_curves_monotone_and_cumulative():
  from experiments import flops as fig
  curves = fig.per_token_curves(6, tiny_config())
  for curve in curves.values():
    assert all(a < b for a, b in zip(curve, curve[1:]))
  assert fig.cumulative([1.0, 2.0, 4.0]) == [1.0, 3.0, 7.0]
  per_token = fig.ratios(curves, [3], "per_token")["R1/mha128"]["3"]
  assert per_token == curves["M1"][2] / curves["R1/mha128"][2]
  whole = fig.ratios(curves, [3], "cumulative")["R1/mha128"]["3"]
  assert whole == sum(curves["M1"][:3]) / sum(curves["R1/mha128"][:3])


def test_figure_bad_lengths():
  from experiments import flops as fig
  with pytest.raises(ValueError, match="context_len"):
    fig.r1_decode_flops_per_token(0)
  with pytest.raises(ValueError, match="max_len"):
    fig.per_token_curves(-3)
  with pytest.raises(ValueError, match="--points entry"):
    fig.parse_points(["32768", "-5"])
  with pytest.raises(ValueError, match="not an integer"):
    fig.parse_points(["64K"])
  with pytest.raises(ValueError, match="unknown R1 attention"):
    fig.r1_attention_flops_per_key(fig.DEEPSEEK_R1, "gqa")


@pytest.mark.parametrize("flag", ["--points=0", "--points=32768,-5", "--max_len=0"])
def test_figure_command_rejects_bad_lengths(flag):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, "-m", "experiments.flops", flag], capture_output=True,
                       text=True, timeout=120, cwd=repo)
  assert run.returncode != 0
  assert "must be a positive number of tokens" in run.stderr
  assert "Traceback" not in run.stderr
