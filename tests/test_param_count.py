"""m1jax/param_count.py: the release's 456B / 45.9B figures, and the shape-based count against
a real `init` param tree so the count cannot drift from the model."""
import jax
import numpy as np
import pytest

from m1jax import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM, init_params
from m1jax.param_count import abstract_params, component_of, count_params
from tests.helpers import tiny_config

# docs/MODEL.md §3.3: the M1 report's "456B total, 45.9B activated" to the parameter, and the
# release's model.safetensors.index.json total_size (bf16, with the router in float32).
RELEASE_TOTAL = 456_089_655_296
RELEASE_ACTIVE = 45_944_920_064
RELEASE_CHECKPOINT_BYTES = 912_210_767_872


@pytest.fixture(scope="module")
def release():
  from configs import minimax_m1_456b
  # The released checkpoint stores bf16 weights; the trainer config keeps fp32 masters.
  return ModelConfig.from_dict(minimax_m1_456b.get_config().model.to_dict()).replace(
      param_dtype="bfloat16")


@pytest.fixture(scope="module")
def release_counts(release):
  return count_params(release)


def test_release_total_active_and_checkpoint_bytes(release_counts):
  assert release_counts["total_params"] == RELEASE_TOTAL
  assert release_counts["active_params"] == RELEASE_ACTIVE
  assert release_counts["checkpoint_bytes"] == RELEASE_CHECKPOINT_BYTES
  assert sum(release_counts["components"].values()) == RELEASE_TOTAL
  assert release_counts["bytes_bf16"] == {name: 2 * n for name, n in
                                          release_counts["components"].items()}


def test_release_components_follow_the_closed_form(release, release_counts):
  # Written out from the architecture (docs/MODEL.md §3-§7), not from the model code.
  c = release
  V, M, L, E, F = (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_local_experts,
                   c.intermediate_size)
  HD, KD = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
  softmax_layers = sum(c.attn_type_list)
  lightning_layers = L - softmax_layers
  assert (lightning_layers, softmax_layers) == (70, 10)
  assert release_counts["components"] == {
      "embedding": V * M,
      "lm_head": M * V,
      "final_norm": M,
      "layer_norms": L * 2 * M,  # input_layernorm and post_attention_layernorm
      "router": L * M * E,
      "experts": L * E * 3 * M * F,  # w1, w3: M -> F; w2: F -> M
      # qkv_proj (M -> 3 HD), output_gate (M -> HD), out_proj (HD -> M), output norm (HD)
      "lightning_attention": lightning_layers * (3 * M * HD + M * HD + HD * M + HD),
      # q (M -> HD), k and v (M -> KD each), o (HD -> M); no biases, no q/k norms
      "softmax_attention": softmax_layers * (M * HD + 2 * M * KD + HD * M),
  }


def test_release_checkpoint_bytes_equal_the_models_own_dtypes(release):
  # bf16 params with the router in float32 is what the model itself declares at
  # param_dtype="bfloat16", so the byte total is a property of the tree, not only a formula.
  assert release.param_dtype == "bfloat16"
  leaves = jax.tree_util.tree_leaves(abstract_params(release))
  assert sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves) == RELEASE_CHECKPOINT_BYTES


@pytest.mark.parametrize("attn_types, param_dtype", [
    pytest.param((0, 0, 0, 1) * 2, "float32", id="scanned-f32"),
    pytest.param((0, 1, 0), "bfloat16", id="unrolled-bf16"),
])
def test_count_matches_a_real_init_param_tree(attn_types, param_dtype):
  config = tiny_config(attn_types, param_dtype=param_dtype)
  real = init_params(MiniMaxM1ForCausalLM(config), jax.random.key(0))
  abstract = abstract_params(config)
  # The counted tree is the initialised one: same paths, shapes and dtypes.
  assert jax.tree.structure(real) == jax.tree.structure(abstract)
  for (path, r), a in zip(jax.tree_util.tree_leaves_with_path(real),
                          jax.tree_util.tree_leaves(abstract)):
    assert (r.shape, r.dtype) == (a.shape, a.dtype), jax.tree_util.keystr(path)

  components: dict[str, int] = {}
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(real):
    name = component_of(tuple(str(getattr(k, "key", k)) for k in key_path))
    components[name] = components.get(name, 0) + leaf.size
  counts = count_params(config)
  assert counts["components"] == components
  assert counts["total_params"] == sum(leaf.size for leaf in jax.tree_util.tree_leaves(real))
  # Every component the model has is present (a classifier that folded, e.g., the softmax
  # projections into another bucket would still get the total right).
  assert set(components) == {"embedding", "lm_head", "final_norm", "layer_norms", "router",
                             "experts", "lightning_attention", "softmax_attention"}
  if param_dtype == "bfloat16":
    nbytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(real))
    assert counts["checkpoint_bytes"] == nbytes
  expert_share = config.num_experts_per_tok / config.num_local_experts
  assert counts["active_params"] == round(
      sum(n for name, n in components.items() if name not in ("embedding", "lm_head",
                                                               "experts"))
      + components["experts"] * expert_share)
