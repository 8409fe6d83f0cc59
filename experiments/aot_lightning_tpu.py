"""Ahead-of-time compile of the Pallas TPU lightning kernel for real TPU chips, from a CPU host.

  TPU_SKIP_MDS_QUERY=1 python -m experiments.aot_lightning_tpu
  TPU_SKIP_MDS_QUERY=1 python -m experiments.aot_lightning_tpu --chips=v5e --seq_len=1024  # quick

Needs libtpu (`pip install "jax[tpu]==0.10.2"`); no TPU. For each chip it builds an abstract
4-chip topology with `jax.experimental.topologies`, a (data=2, heads=2) mesh, and compiles
with Mosaic (not interpret mode):
  fwd:      out, final_state = lightning_attention_tpu(q, k, v, slope)
  fwd_bwd:  the forward plus the VJP (dq, dk, dv, dslope, d_initial_state)
inside `jax.shard_map` (Mosaic kernels cannot be auto-partitioned). Global shapes are the
456B model's lightning layer, B=2, T=8192, H=64, D=128, bf16, so each chip holds
[1, 8192, 32, 128]. Records, per chip and mode, compile success and time,
`memory_analysis()` and `cost_analysis()` (whose flops for the Mosaic custom calls are the
kernels' own `pl.CostEstimate`), and writes benchmarks/results/aot_lightning_tpu.json.
"""
import os

# The host must not try to drive a TPU: compile only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")

import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from pallas_kernels.lightning_tpu import BlockSizes  # noqa: E402
from pallas_kernels.lightning_tpu_ops import lightning_attention_tpu  # noqa: E402

# 4-chip slices; v5p has one (megacore) device per chip, v5e and v6e one core per chip.
TOPOLOGIES = {"v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}

_CHIPS = flags.DEFINE_list("chips", list(TOPOLOGIES), "Chip generations to compile for.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/aot_lightning_tpu.json", "JSON output.")
_BATCH = flags.DEFINE_integer("batch", 2, "Global B (sharded over the data axis).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 8192, "T per device (the sequence is not sharded).")
_HEADS = flags.DEFINE_integer("heads", 64, "Global H (sharded over the heads axis).")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 128, "D.")
_BLOCK_T = flags.DEFINE_integer("block_t", BlockSizes().block_t, "Chunk length C.")


def _memory(compiled) -> dict:
  mem = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {f: int(getattr(mem, f)) for f in fields if hasattr(mem, f)}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per module
    cost = cost[0] if cost else {}
  keep = ("flops", "transcendentals", "bytes accessed")
  return {k: float(cost[k]) for k in keep if k in cost}


def compile_for_chip(chip: str, *, batch: int, seq_len: int, heads: int, head_dim: int,
                     block_t: int, dtype=jnp.bfloat16) -> dict:
  """Compiles fwd and fwd_bwd for one chip; returns a JSON-able record."""
  topo = topologies.get_topology_desc(platform="tpu", topology_name=TOPOLOGIES[chip])
  devices = np.asarray(topo.devices)
  mesh = Mesh(devices.reshape(2, -1), ("data", "heads"))
  block_sizes = BlockSizes(block_t=block_t)
  seq = P("data", None, "heads", None)
  state = P("data", "heads", None, None)
  slope_spec = P("heads")

  def local_fwd(q, k, v, slope):
    return lightning_attention_tpu(q, k, v, slope, block_sizes=block_sizes)

  def local_fwd_bwd(q, k, v, slope, d_out, d_state):
    outs, pullback = jax.vjp(local_fwd, q, k, v, slope)
    dq, dk, dv, dslope = pullback((d_out, d_state))
    # Every data shard holds part of the batch; the slope gradient sums over it.
    return outs, (dq, dk, dv, jax.lax.psum(dslope, "data"))

  def sds(shape, dt, spec):
    return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, spec))

  shape = (batch, seq_len, heads, head_dim)
  q = sds(shape, dtype, seq)
  slope = sds((heads,), jnp.float32, slope_spec)
  d_state = sds((batch, heads, head_dim, head_dim), jnp.float32, state)
  programs = {
      "fwd": (jax.shard_map(local_fwd, mesh=mesh, in_specs=(seq, seq, seq, slope_spec),
                            out_specs=(seq, state), check_vma=False), (q, q, q, slope)),
      "fwd_bwd": (jax.shard_map(local_fwd_bwd, mesh=mesh,
                                in_specs=(seq, seq, seq, slope_spec, seq, state),
                                out_specs=((seq, state), (seq, seq, seq, slope_spec)),
                                check_vma=False), (q, q, q, slope, q, d_state)),
  }
  record = {"chip": chip, "topology": TOPOLOGIES[chip], "num_devices": int(devices.size),
            "device_kind": str(devices.flat[0].device_kind), "mesh": {"data": 2, "heads":
            int(devices.size) // 2}, "global_shape_BTHD": list(shape),
            "local_shape_BTHD": [batch // 2, seq_len, heads // (devices.size // 2), head_dim],
            "dtype": jnp.dtype(dtype).name, "block_t": block_t, "modes": {}}
  for mode, (fn, args) in programs.items():
    t0 = time.perf_counter()
    try:
      compiled = jax.jit(fn).lower(*args).compile()
    except Exception as e:  # noqa: BLE001 - a failed compile is a result to record
      record["modes"][mode] = {"compiled": False, "error": f"{type(e).__name__}: {e}"[:2000]}
      continue
    text = compiled.as_text()
    record["modes"][mode] = {
        "compiled": True,
        "compile_seconds": round(time.perf_counter() - t0, 2),
        "mosaic_custom_calls": text.count("tpu_custom_call"),
        "memory_analysis_per_chip": _memory(compiled),
        "cost_analysis_per_chip": _cost(compiled),
    }
  return record


def main(argv):
  del argv
  records = [compile_for_chip(chip, batch=_BATCH.value, seq_len=_SEQ_LEN.value,
                              heads=_HEADS.value, head_dim=_HEAD_DIM.value,
                              block_t=_BLOCK_T.value) for chip in _CHIPS.value]
  result = {"what": "AOT compile of pallas_kernels.lightning_tpu (Mosaic) via libtpu topologies",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax": jax.__version__, "records": records}
  os.makedirs(os.path.dirname(_OUT.value) or ".", exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
