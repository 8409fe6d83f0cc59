"""Ahead-of-time compile, for a TPU from this CPU host, of a tiny model's training loss and
gradient on packed rows: proves that packed training on a TPU runs the lightning kernel.

  TPU_SKIP_MDS_QUERY=1 python -m experiments.aot_train_step_tpu

Needs libtpu (requirements-test.txt); no TPU. The model has one lightning and one softmax
layer (head_dim 64), the batch carries segment_ids (three documents and padding per row),
and the program is lowered for one chip of a 2x2 TPU topology inside
`jax.sharding.use_abstract_mesh`, so `lightning_impl="auto"` sees the TPU as its target platform
(`pallas_kernels.lightning_chunk.target_platform`). The record counts `tpu_custom_call`s
(Mosaic kernels) in the compiled HLO: forward + dq + dk/dv = 3 per lightning layer.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# Other processes (pytest workers) may hold libtpu at the same time; compile-only is safe.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from m1jax.config import ModelConfig  # noqa: E402
from m1jax.model import MiniMaxM1ForCausalLM  # noqa: E402


def tiny_packed_config(lightning_impl: str) -> ModelConfig:
  """One lightning and one softmax layer, head_dim 64 (the kernels' smallest)."""
  return ModelConfig(vocab_size=128, hidden_size=128, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                     head_dim=64, rotary_dim=64, num_local_experts=2, num_experts_per_tok=1,
                     attn_type_list=(0, 1), block_size=16, lightning_impl=lightning_impl)


def compile_train_step(lightning_impl: str, *, chip: str = "v5e", batch: int = 2,
                       seq_len: int = 64) -> dict:
  """Compiles value_and_grad of the packed-row loss for one TPU chip; a JSON-able record."""
  topo = topologies.get_topology_desc(platform="tpu", topology_name=f"{chip}:2x2")
  mesh = Mesh(np.asarray(topo.devices)[:1], ("data",))
  config = tiny_packed_config(lightning_impl)
  model = MiniMaxM1ForCausalLM(config)
  rep = NamedSharding(mesh, P())

  def on_tpu(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep)

  ids = jnp.zeros((batch, seq_len), jnp.int32)
  abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), ids)["params"]))
  params = jax.tree.map(on_tpu, abstract)
  tokens = jax.ShapeDtypeStruct((batch, seq_len + 1), jnp.int32, sharding=rep)
  segs = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=rep)

  def loss(p, tokens_BT, segment_ids_BT):
    logits = model.apply({"params": p}, tokens_BT[:, :-1],
                         segment_ids_BT=segment_ids_BT).logits
    xent = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BT[:, 1:])
    keep = (segment_ids_BT != 0).astype(xent.dtype)
    return jnp.sum(xent * keep) / jnp.maximum(jnp.sum(keep), 1.0)

  t0 = time.perf_counter()
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    lowered = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, segs)
  compiled = lowered.compile()
  text = compiled.as_text()
  return {"chip": chip, "lightning_impl": lightning_impl, "batch": batch, "seq_len": seq_len,
          "config": {k: v for k, v in dataclasses.asdict(config).items()
                     if isinstance(v, (int, str))},
          "compile_seconds": round(time.perf_counter() - t0, 2),
          "tpu_custom_calls": text.count("tpu_custom_call"),
          "kernel_names": sorted({n for n in ("lightning_fwd", "lightning_bwd_dq",
                                              "lightning_bwd_dkdv") if n in text})}


def main():
  records = [compile_train_step(impl) for impl in ("auto", "pallas_tpu", "chunked")]
  print(json.dumps(records, indent=2))


if __name__ == "__main__":
  main()
