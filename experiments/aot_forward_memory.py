"""Per-chip memory of the 456B forward (+ full-logits CE) compiled for a TPU pod from a CPU host.

  TPU_SKIP_MDS_QUERY=1 python -m experiments.aot_forward_memory --layers=8 --seq=8192 \
      --topology=v5p:4x4x4 --mesh=fsdp=-1

Nothing is allocated: params are ShapeDtypeStructs carrying their shardings (the logical
rules of m1jax/sharding.py on a mesh of the topology's devices), one sequence of --seq tokens
per chip; the program is lowered under the mesh and rules (activation constraints on) and
compiled with libtpu. Prints compiled.memory_analysis() per chip as JSON, or the compiler's
RESOURCE_EXHAUSTED message when it does not fit (that message is the measurement).
"""
import json
import os
import resource
import time

from absl import app
from absl import flags

_LAYERS = flags.DEFINE_integer("layers", 8, "decoder layers (a multiple of 8)")
_SEQ = flags.DEFINE_integer("seq", 8192, "tokens per chip (one sequence per chip)")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:4x4x4", "jax.experimental.topologies name")
_MESH = flags.DEFINE_string("mesh", "fsdp=-1", "mesh spec (m1jax.sharding.make_mesh)")
_PARAM_DTYPE = flags.DEFINE_string("param_dtype", "bfloat16", "stored param dtype")
_ATTENTION = flags.DEFINE_string("attention_impl", "", "override model.attention_impl")


def main(argv):
  del argv
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from jax.experimental import topologies

  from configs import minimax_m1_456b
  from m1jax import sharding
  from m1jax.config import ModelConfig
  from m1jax.losses import next_token_loss
  from m1jax.model import MiniMaxM1ForCausalLM

  model_dict = minimax_m1_456b.get_config(f"layers={_LAYERS.value}").model.to_dict()
  model_dict.update(param_dtype=_PARAM_DTYPE.value, lightning_impl="chunked", remat=False)
  if _ATTENTION.value:
    model_dict["attention_impl"] = _ATTENTION.value
  model = MiniMaxM1ForCausalLM(ModelConfig.from_dict(model_dict))
  topo = topologies.get_topology_desc(platform="tpu", topology_name=_TOPOLOGY.value)
  mesh = sharding.make_mesh(_MESH.value, topo.devices)
  batch = mesh.size // (mesh.shape["tensor"] * mesh.shape["sequence"])
  ids = jax.ShapeDtypeStruct((batch, _SEQ.value), jnp.int32,
                             sharding=sharding.activation_sharding(mesh, ("batch", "length")))
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))
  abstract = nn.meta.unbox(boxed["params"])
  shardings = sharding.logical_shardings(abstract, nn.get_partition_spec(boxed["params"]), mesh)
  params = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)

  def loss(params, ids):
    return next_token_loss(model.apply({"params": params}, ids).logits, ids)

  result = {"layers": _LAYERS.value, "seq_per_chip": _SEQ.value, "topology": _TOPOLOGY.value,
            "mesh": sharding.describe(mesh), "param_dtype": _PARAM_DTYPE.value,
            "attention_impl": model.config.attention_impl}
  start = time.time()
  try:
    with sharding.use_mesh(mesh):
      compiled = jax.jit(loss).lower(params, ids).compile()
    m = compiled.memory_analysis()
    gib = 1 << 30
    result.update(compiled=True, argument_gib=round(m.argument_size_in_bytes / gib, 3),
                  temp_gib=round(m.temp_size_in_bytes / gib, 3))
  except Exception as e:  # noqa: BLE001 -- an out-of-memory message is the result
    result.update(compiled=False, error=str(e).splitlines()[0][:300])
  result["compile_s"] = round(time.time() - start, 1)
  result["host_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 2)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
