"""The pod planner (m1jax/plan.py): a reduced model's full train step compiled for v5p:2x2x2 with
libtpu (no TPU), its argument bytes against a count from the state's shardings, and the bad
inputs it refuses before compiling anything."""
import math

import jax
import pytest

from configs import common, minimax_m1_456b, tiny
from m1jax import plan as planner
from m1jax import sharding
from m1jax.config import ModelConfig
from m1jax.model import MiniMaxM1ForCausalLM
from m1jax.train.optimizer import make_optimizer
from m1jax.train.state import abstract_train_state

_GIB = 1 << 30


def _two_layer_config():
  """The release reduced to one lightning + one softmax layer (one scanned period of 2) and
  whole-tile widths (multiples of 128): bf16 compute, fp32 master weights + AdamW, remat,
  top-2 of 4 experts. Whole tiles matter: TPU layouts pad narrow dimensions (tiny.py's
  64-wide arrays take 1.4x their bytes), which would hide what this test counts."""
  config = minimax_m1_456b.get_config()
  model = config.model
  common.set_layer_types(model, [0, 1])
  model.hidden_size = 1024
  model.num_attention_heads = 8
  model.num_key_value_heads = 2
  model.head_dim = 128
  model.rotary_dim = 64
  model.intermediate_size = 512
  model.num_local_experts = 4
  model.vocab_size = 2048
  # The Pallas lightning and megablox kernels (the "auto" choices on TPU) are Mosaic calls,
  # which XLA cannot partition outside a shard_map; this test is about the planner, so it
  # uses the pure-XLA operators (WORKSPACE_NOTES.md, Issue 11, Pod planner).
  model.lightning_impl = "chunked"
  model.moe_impl = "ragged"
  return config


# TPU gives a scalar a 512-byte buffer (measured: the step and optimizer counters are the
# only difference between the compiled argument bytes and the plain count).
_TPU_SCALAR_BYTES = 512


def _state_bytes_per_chip(config, mesh) -> int:
  """Params, Adam moments and counters on one chip: each leaf's bytes over the product of
  the mesh axes its sharding splits it over."""
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(config.model.to_dict()))
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  total = 0
  for leaf in jax.tree.leaves(abstract_train_state(model, tx, mesh)):
    if not leaf.shape:
      total += _TPU_SCALAR_BYTES
      continue
    ways = math.prod(mesh.shape[axis] for part in leaf.sharding.spec if part is not None
                     for axis in ((part,) if isinstance(part, str) else part))
    nbytes = math.prod(leaf.shape) * leaf.dtype.itemsize
    assert nbytes % ways == 0
    total += nbytes // ways
  return total


@pytest.mark.slow
def test_two_layer_train_step_fits_v5p_2x2x2_and_arguments_match_the_state():
  config = _two_layer_config()
  devices = planner.topology_devices("v5p:2x2x2")
  record = planner.plan(config, "v5p:2x2x2", mesh="fsdp=4,expert=2", seq_len=128,
                        devices=devices)
  assert record["compiled"] and record["fits"]
  assert record["mesh"] == "data=1,fsdp=4,expert=2,tensor=1,sequence=1"
  # The limit came from the compiler's own message (v5p: 95.7 GiB per chip).
  assert record["hbm_source"] == "the TPU compiler's limit"
  assert 90 * _GIB < record["hbm_bytes"] < 100 * _GIB
  mesh = sharding.make_mesh("fsdp=4,expert=2", devices)
  # Batch: tokens, positions, segment_ids, loss_mask, int32 [8, 128], rows over 8 chips.
  batch_bytes = 4 * (8 * 128 * 4) // 8
  state_bytes = _state_bytes_per_chip(config, mesh)
  assert record["argument_bytes"] == state_bytes + batch_bytes
  # fp32 param + m + v = 12 bytes per param / 8 chips, except the lightning output norm's
  # [H, D] scale: it has no embed or expert dimension, so it is split over tensor only and
  # replicated over the 8 chips here (573K of the 456B model's params).
  norm = 8 * 128
  assert state_bytes - 3 * _TPU_SCALAR_BYTES == 12 * (record["params"] - norm) // 8 + 12 * norm
  # The planner's own count (no padding) agrees up to the scalars' padding.
  assert record["analytic_argument_bytes"] == state_bytes + batch_bytes - 3 * (
      _TPU_SCALAR_BYTES - 4)
  # The new state is written over the donated one.
  assert record["alias_bytes"] == state_bytes
  assert record["per_chip_bytes"] == (record["argument_bytes"] + record["output_bytes"]
                                      - record["alias_bytes"] + record["temp_bytes"]
                                      + record["generated_code_bytes"])
  assert record["tokens_per_step"] == 8 * 128
  assert record["step_seconds_estimate"] == pytest.approx(
      record["train_flops_per_step"] / (8 * 459e12 * 0.4))


@pytest.mark.parametrize("topology", ["v5p:8x8", "v4:2x2x1", "tpu-512", "v6e:16x16x2", ""])
def test_unknown_topology_lists_valid_forms(topology):
  with pytest.raises(planner.PlanInputError, match="valid forms: v5e:AxB"):
    planner.plan(tiny.get_config(), topology)


def test_topology_libtpu_refuses_is_an_input_error():
  with pytest.raises(planner.PlanInputError, match="v5p:3x3x3.*libtpu refuses"):
    planner.topology_devices("v5p:3x3x3")


@pytest.mark.parametrize("mesh, match", [
    ("fsdp=16", "v5p:2x2x2 has 8 chips.*16 devices, but there are 8"),
    ("fsdp=2,expert=2", "4 devices, but there are 8"),
    ("fsdp=1,expert=8,sequence=2", "16 devices, but there are 8"),
])
def test_mesh_not_the_topology_chip_count(mesh, match):
  with pytest.raises(planner.PlanInputError, match=match):
    planner.plan(tiny.get_config(), "v5p:2x2x2", mesh=mesh)


def test_experts_not_divisible_by_expert_axis():
  config = tiny.get_config()
  config.model.num_local_experts = 6
  config.model.num_experts_per_tok = 2
  with pytest.raises(planner.PlanInputError, match="expert=4 does not divide "
                     "model.num_local_experts=6"):
    planner.plan(config, "v5p:2x2x2", mesh="fsdp=2,expert=4")


def test_sequence_length_not_divisible_by_sequence_axis():
  with pytest.raises(planner.PlanInputError, match="sequence=4 does not divide the sequence "
                     "length 130"):
    planner.plan(tiny.get_config(), "v5p:2x2x2", mesh="fsdp=2,sequence=4", seq_len=130)


def test_batch_not_split_over_batch_axes():
  with pytest.raises(planner.PlanInputError, match=r"batch of 6 rows.*data\*fsdp\*expert = 8"):
    planner.plan(tiny.get_config(), "v5p:2x2x2", mesh="fsdp=8", batch=6)


def test_parse_oom_reads_the_compiler_message():
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
             "temporaries (3.00T) exceeds available HBM (95.73G). HLO module: jit_f.")
  assert planner.parse_oom(message) == (int(3.00 * (1 << 40)), int(95.73 * _GIB))
  assert planner.parse_oom("INTERNAL: something else") is None


@pytest.mark.slow
def test_lightning_kernel_compiles_on_a_mesh_without_sequence():
  """At sequence=1 the Pallas lightning kernel still runs inside a shard_map (one LASP-2
  shard): XLA cannot partition a Pallas call, and before that wrapping this compile raised
  "Mosaic kernels cannot be automatically partitioned"."""
  config = _two_layer_config()
  config.model.lightning_impl = "pallas_tpu"
  record = planner.plan(config, "v5p:2x2x2", mesh="fsdp=4,expert=2", seq_len=128)
  assert record["compiled"] and record["fits"]
