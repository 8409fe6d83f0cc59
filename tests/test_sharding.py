"""Meshes from spec strings, the logical-axis rules' layout of every parameter, and clear
errors for bad meshes (8 fake CPU devices, tests/conftest.py)."""
import jax
import pytest
from jax.sharding import AxisType, PartitionSpec as PS

from configs.common import optimizer_config
from m1jax import sharding
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.train.optimizer import make_optimizer
from m1jax.train.state import abstract_train_state, init_train_state, state_shardings
from tests.helpers import tiny_config


def test_mesh_from_spec_has_all_axes_auto_and_resolves_minus_one():
  mesh = sharding.make_mesh("fsdp=-1,tensor=2")
  assert mesh.axis_names == sharding.MESH_AXES
  assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "expert": 1, "tensor": 2, "sequence": 1}
  assert set(mesh.axis_types) == {AxisType.Auto}
  # An explicit device list (here one device) needs a spec whose product matches it.
  assert sharding.make_mesh("fsdp=1", jax.devices()[:1]).size == 1


@pytest.mark.parametrize("spec, message", [
    ("fsdp=4,model=2", r"mesh 'fsdp=4,model=2': unknown axis 'model'; mesh axes are data, "
                       r"fsdp, expert, tensor, sequence"),
    ("fsdp=2,tensor=2", r"= 4 devices, but there are 8"),
    ("fsdp=-1,tensor=-1", r"more than one axis is -1 \(fsdp, tensor\)"),
    ("fsdp=-1,tensor=3", r"the fixed axes take 3 devices, which does not divide the 8"),
    ("fsdp=4,fsdp=2", r"axis 'fsdp' is given twice"),
    ("fsdp=x", r"fsdp='x' is not an int"),
    ("tensor", r"axis 'tensor' needs a size"),
    ("", r"= 1 devices, but there are 8"),
])
def test_bad_mesh_specs_name_the_mesh_and_the_axis(spec, message):
  with pytest.raises(ValueError, match=message):
    sharding.make_mesh(spec)


ES = ("fsdp", "sequence", "expert")  # every embed dim but the experts'
FS = ("fsdp", "sequence")            # the experts' embed dim (expert is taken by E)
# Every parameter's spec on a scanned stack (leading layer-group axis unsharded).
EXPECTED = {
    "embed_tokens": PS("tensor", ES),
    "lm_head": PS(ES, "tensor"),
    "norm/scale": PS(ES),
    "block_sparse_moe/router": PS(None, ES, None),
    "block_sparse_moe/w1": PS(None, "expert", FS, "tensor"),
    "block_sparse_moe/w3": PS(None, "expert", FS, "tensor"),
    "block_sparse_moe/w2": PS(None, "expert", "tensor", FS),
    "input_layernorm/scale": PS(None, ES),
    "post_attention_layernorm/scale": PS(None, ES),
    # lightning layer (layer_0 of each group)
    "self_attn/qkv_proj": PS(None, ES, "tensor", None),
    "self_attn/output_gate": PS(None, ES, "tensor", None),
    "self_attn/out_proj": PS(None, "tensor", None, ES),
    "self_attn/norm/scale": PS(None, "tensor", None),
    # softmax layer (layer_1)
    "self_attn/q_proj": PS(None, ES, "tensor", None),
    "self_attn/k_proj": PS(None, ES, "tensor", None),
    "self_attn/v_proj": PS(None, ES, "tensor", None),
    "self_attn/o_proj": PS(None, "tensor", None, ES),
}


def _key(path) -> str:
  names = [str(getattr(k, "key", k)) for k in path]
  top = "/".join(names)
  for suffix in sorted(EXPECTED, key=len, reverse=True):
    if top.endswith(suffix):
      return suffix
  raise AssertionError(f"no expected spec for {top}")


def test_every_parameter_and_adam_moment_gets_its_spec_on_a_2x2x2_mesh():
  config = tiny_config((0, 1, 0, 1), vocab_size=128)  # period 2: a scanned stack
  model = MiniMaxM1ForCausalLM(config)
  tx, _ = make_optimizer(optimizer_config(), 10)
  mesh = sharding.make_mesh("expert=2,fsdp=2,tensor=2")
  state = init_train_state(model, tx, jax.random.key(0), mesh)
  seen = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
    key = _key(path)
    seen.add(key)
    assert leaf.sharding.spec == EXPECTED[key], (jax.tree_util.keystr(path), leaf.sharding.spec)
    assert leaf.sharding.mesh.shape == mesh.shape
  assert seen == set(EXPECTED)
  # Adam's moments share the params' layout: no replicated optimizer state.
  adam = state.opt_state[1][0]
  for moments in (adam.mu, adam.nu):
    for (path, m), p in zip(jax.tree_util.tree_leaves_with_path(moments),
                            jax.tree.leaves(state.params)):
      assert m.sharding.spec == p.sharding.spec, jax.tree_util.keystr(path)
  # No device holds a whole weight: each expert weight is cut 8 ways.
  w1 = state.params["model"]["groups"]["layer_0"]["block_sparse_moe"]["w1"]
  assert w1.addressable_shards[0].data.shape == (2, 2, 16, 24)
  # The abstract state (what Orbax restores onto) carries the same shardings.
  abstract = abstract_train_state(model, tx, mesh)
  assert jax.tree.map(lambda a: a.sharding.spec, abstract.params) == \
      jax.tree.map(lambda a: a.sharding.spec, state.params)


def test_a_dimension_that_does_not_divide_its_mesh_axis_names_mesh_and_dimension():
  config = tiny_config((0, 1), vocab_size=128, num_attention_heads=6)
  model = MiniMaxM1ForCausalLM(config)
  tx, _ = make_optimizer(optimizer_config(), 10)
  with pytest.raises(ValueError, match=r"mesh data=1,fsdp=2,expert=1,tensor=4,sequence=1: "
                                       r"train state .*'self_attn'\]\['norm'\].* dimension 0 "
                                       r"\('heads'\) of size 6 is not divisible by mesh axes "
                                       r"tensor = 4"):
    state_shardings(model, tx, sharding.make_mesh("fsdp=2,tensor=4"))
