"""The whole causal LM: causality, scanned vs unrolled stacks, per-layer decay slopes,
bf16, and logical axis names on every parameter.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import m1jax
from m1jax.config import ModelConfig
from m1jax.layers import decoder
from m1jax.layers import params as lp
from m1jax.model import MiniMaxM1ForCausalLM, init_params
from tests.assertions import assert_close
from tests.helpers import random_ids, random_params, tiny_config

LFL = (0, 1, 0)               # both layer types, not periodic: unrolled
LLLF_X2 = (0, 0, 0, 1) * 2    # period 4, two groups: scanned


# ------------------------------------------------------------------ causality
@pytest.mark.parametrize("attn_types, moe_impl", [
    pytest.param(LFL, "ragged", id="unrolled-LFL-ragged"),
    pytest.param(LFL, "dense", id="unrolled-LFL-dense"),
    pytest.param((0, 1) * 2, "ragged", id="scanned-LFx2-ragged"),
])
def test_logits_never_depend_on_future_or_other_rows(attn_types, moe_impl):
  config = tiny_config(attn_types, moe_impl=moe_impl)
  B, T = 2, 13  # T = 8 + 5: crosses one lightning block boundary, last block short
  model = MiniMaxM1ForCausalLM(config)
  params = random_params(config, 0)
  rng = np.random.default_rng(1)
  embeds = jnp.asarray(rng.standard_normal((B, T, config.hidden_size)), jnp.float32)
  probe_V = jnp.asarray(rng.standard_normal(config.vocab_size), jnp.float32)

  def projected_logits(embeds_BTM):
    logits = model.apply({"params": params}, input_embeds_BTM=embeds_BTM).logits
    return jnp.einsum("btv,v->bt", logits, probe_V)

  @jax.jit
  def jacobian(embeds_BTM):
    # Row by row with lax.map rather than jax.jacrev: jacrev vmaps the backward pass, and
    # jax.lax.ragged_dot has no batching rule for the ragged MoE.
    _, pullback = jax.vjp(projected_logits, embeds_BTM)
    one_hots = jnp.eye(B * T, dtype=jnp.float32).reshape(B * T, B, T)
    rows = jax.lax.map(lambda c: pullback(c)[0], one_hots)
    return rows.reshape(B, T, B, T, config.hidden_size)

  jac = np.asarray(jacobian(embeds))  # [B,T,B,T,M]: d logit(b,t) / d embed(b2,s)
  assert jac.shape == (B, T, B, T, config.hidden_size)
  for b in range(B):
    for t in range(T):
      for b2 in range(B):
        if b2 != b:
          assert np.all(jac[b, t, b2] == 0.0), f"logit ({b},{t}) depends on row {b2}"
      future = jac[b, t, b, t + 1:]
      assert np.all(future == 0.0), (
          f"logit ({b},{t}) depends on positions {t + 1 + np.unique(np.nonzero(future)[0])}")
      # The check has teeth: the current and the first position do matter.
      assert np.any(jac[b, t, b, t] != 0.0)
      assert np.any(jac[b, t, b, 0] != 0.0)


# ------------------------------------------------------------------ scan vs unroll
def _scanned_and_unrolled():
  unrolled = tiny_config(LLLF_X2, scan_layers=False)
  scanned = tiny_config(LLLF_X2, scan_layers=True)
  assert not unrolled.is_scanned and scanned.is_scanned and scanned.layer_period == 4
  return scanned, unrolled


def _to_layout(params, source: ModelConfig, target: ModelConfig):
  per_layer = decoder.split_layer_params(params["model"], source)
  return {**params, "model": decoder.merge_layer_params(per_layer, target)}


def test_scanned_stack_equals_unrolled_stack():
  scanned, unrolled = _scanned_and_unrolled()
  params_unrolled = random_params(unrolled, 0)
  params_scanned = _to_layout(params_unrolled, unrolled, scanned)
  assert set(params_scanned["model"]) == {"groups"}
  ids = random_ids(2, 2, 21)
  out_u = jax.jit(MiniMaxM1ForCausalLM(unrolled).apply)({"params": params_unrolled}, ids)
  out_s = jax.jit(MiniMaxM1ForCausalLM(scanned).apply)({"params": params_scanned}, ids)
  assert_close(out_s.logits, out_u.logits, name="logits")
  np.testing.assert_allclose(float(out_s.aux_loss), float(out_u.aux_loss), rtol=1e-6)
  # Router statistics come back in global layer order in both layouts.
  for a, b in zip(out_s.router_stats, out_u.router_stats):
    assert a.shape[0] == 8
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_scan_uses_global_layer_index_for_slopes(monkeypatch):
  """A scan that fed every group the slopes of group 0 (layers l % p) must be caught."""
  scanned, unrolled = _scanned_and_unrolled()
  params_unrolled = random_params(unrolled, 3)
  params_scanned = _to_layout(params_unrolled, unrolled, scanned)
  ids = random_ids(4, 1, 19)
  # Fresh lambdas: a jit cache keyed on an equal bound method would skip the patch below.
  expected = jax.jit(lambda p, i: MiniMaxM1ForCausalLM(unrolled).apply({"params": p}, i))(
      params_unrolled, ids).logits
  correct = jax.jit(lambda p, i: MiniMaxM1ForCausalLM(scanned).apply({"params": p}, i))(
      params_scanned, ids).logits
  assert_close(correct, expected, name="global-index slopes")

  true_slopes = m1jax.lightning_slopes

  def group_local_slopes(num_heads, num_layers):
    rows = true_slopes(num_heads, num_layers)
    return [rows[l % scanned.layer_period] for l in range(num_layers)]

  monkeypatch.setattr(decoder, "lightning_slopes", group_local_slopes)
  wrong = jax.jit(lambda p, i: MiniMaxM1ForCausalLM(scanned).apply({"params": p}, i))(
      params_scanned, ids).logits
  with pytest.raises(AssertionError, match="rms-relative error"):
    assert_close(wrong, expected, tol=100 * 2e-5, name="group-local slopes")


@pytest.mark.parametrize("attn_types, scan", [
    pytest.param(LLLF_X2, True, id="scanned"),
    pytest.param(LLLF_X2, False, id="unrolled"),
    pytest.param(LFL, True, id="non-periodic"),
])
def test_split_merge_round_trip_is_identity(attn_types, scan):
  config = tiny_config(attn_types, scan_layers=scan)
  params = random_params(config, 5)["model"]
  per_layer = decoder.split_layer_params(params, config)
  assert len(per_layer) == config.num_hidden_layers
  # Each per-layer tree has the attention params of its own layer type.
  for l, layer in enumerate(per_layer):
    expected_attn = {"qkv_proj"} if attn_types[l] == 0 else {"q_proj"}
    assert expected_attn <= set(layer["self_attn"]), l
  merged = decoder.merge_layer_params(per_layer, config)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, merged, params)
  # Layers are distinct (a split that returned group 0 everywhere would fail here).
  a = per_layer[0]["block_sparse_moe"]["w1"]
  b = per_layer[4 if len(attn_types) > 4 else 2]["block_sparse_moe"]["w1"]
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_merge_rejects_wrong_layer_count():
  config = tiny_config(LLLF_X2)
  per_layer = decoder.split_layer_params(
      random_params(config, 6)["model"], config)
  with pytest.raises(ValueError, match="7 layers"):
    decoder.merge_layer_params(per_layer[:7], config)


# ------------------------------------------------------------------ slopes
def exact_slope(head: int, layer: int, num_heads: int = 64, num_layers: int = 80) -> float:
  """docs/MODEL.md §6.2 for power-of-two H: 2^(-(h+1)*8/H) * (1 - l/(L-1) + 1e-5)."""
  return 2.0 ** (-(head + 1) * 8 / num_heads) * (1 - layer / (num_layers - 1) + 1e-5)


@pytest.mark.parametrize("layer, factor, first, last", [
    # docs/MODEL.md §6.2's table, digits as printed there.
    (0, "1.00001", "0.917", "0.0039"),
    (40, "0.494", "0.453", "0.0019"),
    (78, "0.0127", "0.0116", "4.9e-05"),
])
def test_release_slopes_match_spec_table(layer, factor, first, last):
  slopes = m1jax.lightning_slopes(64, 80)
  assert len(slopes) == 80 and all(len(row) == 64 for row in slopes)
  row = slopes[layer]
  digits = len(factor.replace(".", "").lstrip("0"))
  assert f"{row[0] / 2 ** (-1 / 8):.{digits}g}" == factor
  assert f"{row[0]:.3g}" == first
  assert f"{row[63]:.2g}" == last
  # The exact formula, head by head.
  for h in range(64):
    assert math.isclose(row[h], exact_slope(h, layer), rel_tol=1e-7), h


def test_release_slopes_exact_endpoints_and_every_layer():
  slopes = m1jax.lightning_slopes(64, 80)
  assert math.isclose(slopes[0][0], 2 ** (-1 / 8) * 1.00001, rel_tol=1e-7)
  assert math.isclose(slopes[0][63], 2 ** -8 * 1.00001, rel_tol=1e-7)
  # Softmax layers are counted in the index; the last layer's factor is just 1e-5.
  assert math.isclose(slopes[79][0], 2 ** (-1 / 8) * 1e-5, rel_tol=1e-7)
  for layer in range(80):
    for h in range(64):
      assert math.isclose(slopes[layer][h], exact_slope(h, layer), rel_tol=1e-7), (layer, h)


@pytest.mark.parametrize("num_heads, base", [
    # Official ALiBi rule: P = 2^floor(log2 H) power-of-two slopes (2^(-8(h+1)/P)), then
    # every other slope of the 2P sequence (2^(-4(h+1)/P) at h = 0, 2, 4, ...).
    pytest.param(6, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3], id="H6"),
    pytest.param(12, [2.0**-e for e in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5],
                 id="H12"),
    pytest.param(4, [2**-2, 2**-4, 2**-6, 2**-8], id="H4"),
    pytest.param(1, [2**-8], id="H1"),
])
def test_non_power_of_two_heads_follow_alibi_interpolation(num_heads, base):
  num_layers = 5
  slopes = m1jax.lightning_slopes(num_heads, num_layers)
  for layer in range(num_layers):
    factor = 1 - layer / (num_layers - 1) + 1e-5
    np.testing.assert_allclose(slopes[layer], np.array(base) * factor, rtol=1e-12)


# ------------------------------------------------------------------ precision
def _round_to_bf16(params):
  """bf16-rounded copies (router kept in float32, as the bf16 model stores it)."""
  def cast(path, x):
    if any(getattr(k, "key", None) == "router" for k in path):
      return x
    return x.astype(jnp.bfloat16)
  return jax.tree_util.tree_map_with_path(cast, params)


@pytest.mark.parametrize("lm_head_fp32", [True, False], ids=["head-fp32", "head-bf16"])
def test_bf16_model_is_close_to_fp32_model(lm_head_fp32):
  config32 = tiny_config((0, 1) * 2, lm_head_fp32=lm_head_fp32)
  config16 = config32.replace(dtype="bfloat16", param_dtype="bfloat16")
  params16 = _round_to_bf16(random_params(config32, 7))
  # The bf16 model's own init has the same structure and dtypes.
  own16 = random_params(config16, 7)
  assert jax.tree.structure(own16) == jax.tree.structure(params16)
  jax.tree.map(lambda a, b: np.testing.assert_equal(a.dtype, b.dtype), own16, params16)
  params32 = jax.tree.map(lambda x: x.astype(jnp.float32), params16)
  ids = random_ids(8, 2, 21)
  out32 = jax.jit(MiniMaxM1ForCausalLM(config32).apply)({"params": params32}, ids)
  out16 = jax.jit(MiniMaxM1ForCausalLM(config16).apply)({"params": params16}, ids)
  assert out32.logits.dtype == out16.logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out16.logits)))
  assert_close(out16.logits, out32.logits, dtype="bfloat16", name="bf16 logits")
  np.testing.assert_allclose(float(out16.aux_loss), float(out32.aux_loss), rtol=2e-2)


def test_lm_head_fp32_switch_is_exact_in_fp32_and_differs_in_bf16():
  config = tiny_config(LFL)
  params = random_params(config, 9)
  ids = random_ids(10, 1, 11)
  on = jax.jit(MiniMaxM1ForCausalLM(config).apply)({"params": params}, ids).logits
  off = jax.jit(MiniMaxM1ForCausalLM(config.replace(lm_head_fp32=False)).apply)(
      {"params": params}, ids).logits
  assert_close(off, on, name="fp32 model, head switch")
  # In a bf16 model the switch matters: the fp32 head is not rounded to bf16.
  config16 = config.replace(dtype="bfloat16", param_dtype="bfloat16")
  params16 = _round_to_bf16(params)
  on16 = jax.jit(MiniMaxM1ForCausalLM(config16).apply)({"params": params16}, ids).logits
  off16 = jax.jit(MiniMaxM1ForCausalLM(config16.replace(lm_head_fp32=False)).apply)(
      {"params": params16}, ids).logits
  assert on16.dtype == off16.dtype == jnp.float32
  assert not np.array_equal(np.asarray(on16), np.asarray(off16))
  # bf16 logits carry only bf16 values; fp32-head logits generally do not.
  off16_np = np.asarray(off16)
  np.testing.assert_array_equal(off16_np, np.asarray(off16.astype(jnp.bfloat16), np.float32))
  on16_np = np.asarray(on16)
  assert not np.array_equal(on16_np, np.asarray(on16.astype(jnp.bfloat16), np.float32))


# ------------------------------------------------------------------ logical axes
PARAM_AXIS_NAMES = {value for name, value in vars(lp).items()
                    if name.isupper() and isinstance(value, str)}


@pytest.mark.parametrize("attn_types, scan", [
    pytest.param(LLLF_X2, True, id="scanned"),
    pytest.param(LFL, False, id="unrolled"),
])
def test_every_parameter_has_logical_axis_names(attn_types, scan):
  assert {"vocab", "embed", "heads", "kv_heads", "head_dim", "experts", "mlp",
          "layers"} <= PARAM_AXIS_NAMES
  config = tiny_config(attn_types, scan_layers=scan)
  model = MiniMaxM1ForCausalLM(config)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, 4), jnp.int32)))
  boxes = jax.tree_util.tree_leaves_with_path(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(boxes) > 10
  for path, box in boxes:
    where = jax.tree_util.keystr(path)
    assert isinstance(box, nn.LogicallyPartitioned), f"{where} has no logical axis names"
    names = box.names
    assert len(names) == box.value.ndim, (where, names, box.value.shape)
    assert any(n is not None for n in names), f"{where}: all axes unnamed"
    assert set(names) - {None} <= PARAM_AXIS_NAMES, (where, names)
    in_scan = config.is_scanned and "groups" in where
    assert (names[0] == lp.LAYERS) == in_scan, (where, names)
  # The same names come out of nn.get_partition_spec, one spec per parameter.
  specs = jax.tree.leaves(nn.get_partition_spec(variables["params"]),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(specs) == len(boxes)
  assert all(len(spec) >= 1 for spec in specs)


def test_init_params_gives_unboxed_params_of_the_declared_shapes():
  config = tiny_config((0, 1), num_hidden_layers=2)
  model = MiniMaxM1ForCausalLM(config)
  params = init_params(model, jax.random.key(0))
  declared = random_params(config, 0)
  assert jax.tree.structure(params) == jax.tree.structure(declared)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(declared)):
    assert (a.shape, a.dtype) == (b.shape, b.dtype)
  assert params["model"]["layers"]["layer_1"]["self_attn"]["q_proj"].shape == (32, 4, 8)
  np.testing.assert_array_equal(params["norm"]["scale"], np.ones(32, np.float32))
  np.testing.assert_allclose(np.std(np.asarray(params["lm_head"])), 0.1, rtol=0.1)
