"""Parity with transformers.MiniMaxForCausalLM on small random models (float32, CPU).

Each case builds a random HF model, perturbs every norm weight (so a mis-mapped norm cannot
hide behind all-ones), `save_pretrained`s it, loads it with m1jax.from_pretrained and
compares logits (max |diff| <= 1e-4 * max |ref|), the LM loss with labels and the
load-balancing loss. transformers' in-tree model rotates the whole head_dim
(docs/MODEL.md §9), so these cases use full rotary; partial rotary is tested against the
formula in tests/layers/test_rope.py.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import FULL as F
from tests.helpers import LINEAR as L
from tests.helpers import hf_model, require

torch = require("torch")
require("transformers")

import m1jax  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  layer_types: tuple
  heads: int = 4
  kv_heads: int = 2
  top_k: int = 2
  experts: int = 4
  alphas: tuple = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # full a/b, linear a/b, mlp a/b
  batch: int = 2
  seq: int = 37
  block: int = 16
  sharded: bool = False


CASES = [
    # Periodic (scanned: period 4, two groups), GQA 2:1, T not a multiple of the block.
    Case("periodic-gqa2-top2-B2-T37", (L, L, L, F) * 2),
    # The release's 7+1 pattern, DeepNorm alphas, sharded checkpoint with an index file.
    Case("m1pattern-deepnorm-B1-T40-sharded", (L,) * 7 + (F,), kv_heads=1,
         alphas=(2.0, 1.0, 2.0, 1.0, 2.0, 1.0), batch=1, seq=40, block=8, sharded=True),
    # Non-periodic (unrolled), MQA, top-1, distinct alpha/beta per sublayer, T a multiple.
    Case("nonperiodic-mqa-top1-B3-T32", (F, L, L, F, L), kv_heads=1, top_k=1,
         alphas=(3.5, 0.5, 1.7, 0.8, 2.2, 1.3), batch=3, seq=32),
    # MHA (kv == heads), top-k = all experts, tiny T shorter than the block.
    Case("mha-topall-B2-T5", (L, F, L), kv_heads=4, top_k=4, seq=5, block=16),
    # Short blocks: many blocks, block size 1 edge is covered by the ops tests.
    Case("manyblocks-top3-B2-T29", (L, L, F), experts=6, top_k=3, seq=29, block=4),
]


def _hf_model(case: Case, seed: int = 0):
  fa, fb, la, lb, ma, mb = case.alphas
  return hf_model(
      case.layer_types, seed=seed, num_attention_heads=case.heads,
      num_key_value_heads=case.kv_heads, num_local_experts=case.experts,
      num_experts_per_tok=case.top_k, block_size=case.block,
      full_attn_alpha_factor=fa, full_attn_beta_factor=fb, linear_attn_alpha_factor=la,
      linear_attn_beta_factor=lb, mlp_alpha_factor=ma, mlp_beta_factor=mb)


@pytest.fixture(scope="module")
def rng():
  return np.random.default_rng(0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_logits_and_losses_match_transformers(case, tmp_path, rng):
  hf = _hf_model(case)
  if case.sharded:
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
  else:
    hf.save_pretrained(tmp_path)
  ids = rng.integers(0, 97, size=(case.batch, case.seq))
  with torch.no_grad():
    ref = hf(torch.tensor(ids), labels=torch.tensor(ids), output_router_logits=True)
  ref_logits = ref.logits.numpy()

  model, params = m1jax.from_pretrained(tmp_path)
  assert model.config.attn_type_list == tuple(int(t == F) for t in case.layer_types)
  out = jax.jit(model.apply)({"params": params}, jnp.asarray(ids))
  logits = np.asarray(out.logits)
  assert logits.shape == (case.batch, case.seq, 97)
  max_diff = np.max(np.abs(logits - ref_logits))
  assert max_diff <= 1e-4 * np.max(np.abs(ref_logits)), (max_diff, np.max(np.abs(ref_logits)))

  aux = float(out.aux_loss)
  np.testing.assert_allclose(aux, float(ref.aux_loss), rtol=1e-5)
  lm = float(m1jax.next_token_loss(out.logits, jnp.asarray(ids)))
  total = lm + model.config.router_aux_loss_coef * aux
  np.testing.assert_allclose(total, float(ref.loss), rtol=1e-5)


def test_dense_and_ragged_moe_give_same_logits_on_hf_weights(tmp_path, rng):
  hf = _hf_model(CASES[0])
  hf.save_pretrained(tmp_path)
  ids = jnp.asarray(rng.integers(0, 97, size=(2, 21)))
  ragged_model, params = m1jax.from_pretrained(tmp_path, moe_impl="ragged")
  dense_model, _ = m1jax.from_pretrained(tmp_path, moe_impl="dense")
  a = ragged_model.apply({"params": params}, ids).logits
  b = dense_model.apply({"params": params}, ids).logits
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def _to_remote_dialect(hf_config: dict) -> dict:
  """Rewrites an in-tree `minimax` config.json into remote-code keys (docs/MODEL.md §8.3)."""
  remote = {k: v for k, v in hf_config.items()
            if k not in ("layer_types", "rope_parameters", "block_size") and
            not k.endswith(("_alpha_factor", "_beta_factor"))}
  remote["model_type"] = "minimax_m1"
  remote["attn_type_list"] = [int(t == F) for t in hf_config["layer_types"]]
  remote["rotary_dim"] = hf_config["head_dim"]
  remote["rope_theta"] = hf_config["rope_parameters"]["rope_theta"]
  remote["postnorm"] = True
  for ours, theirs in (("full_attention", "full_attn"), ("linear_attention", "linear_attn"),
                       ("mlp", "mlp")):
    for ab in ("alpha", "beta"):
      remote[f"layernorm_{ours}_{ab}"] = hf_config[f"{theirs}_{ab}_factor"]
  return remote


def test_remote_dialect_config_loads_to_the_same_logits(tmp_path, rng):
  import json
  case = CASES[2]  # non-periodic, distinct alpha/beta per sublayer
  hf = _hf_model(case)
  hf.save_pretrained(tmp_path)
  ids = jnp.asarray(rng.integers(0, 97, size=(2, 19)))
  model, params = m1jax.from_pretrained(tmp_path)
  expected = model.apply({"params": params}, ids).logits
  config_path = tmp_path / "config.json"
  config_path.write_text(json.dumps(_to_remote_dialect(json.loads(config_path.read_text()))))
  remote_model, remote_params = m1jax.from_pretrained(tmp_path, block_size=case.block)
  assert remote_model.config == model.config
  actual = remote_model.apply({"params": remote_params}, ids).logits
  np.testing.assert_array_equal(np.asarray(actual), np.asarray(expected))
