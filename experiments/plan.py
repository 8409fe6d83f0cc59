"""Plan a pod run from this CPU: the full train step compiled for a TPU topology (libtpu, no TPU).

  python -m experiments.plan --config=configs/minimax_m1_456b.py --topology=v5p:8x8x8 \
      --config.mesh="fsdp=64,expert=8"
  python -m experiments.plan --config=configs/minimax_m1_456b.py --topology=v5p:8x8x8 \
      --config.mesh="fsdp=32,expert=8,sequence=2" --seq_len=32768
  python -m experiments.plan --config=configs/minimax_m1_456b.py --topology=v5p:8x8x4 --search

Compiles m1jax.train.step's jitted step (fp32 master weights + AdamW as the config sets them,
remat, donation, the configured attention implementation, the chunked loss) with
ShapeDtypeStructs for the state: nothing is allocated. Prints the per-chip bytes against the
chip's HBM, the compile time, analytic FLOPs and an MFU-based step time (m1jax/plan.py); the
LAST line is the JSON record (`per_chip_bytes`, `hbm_bytes`, `fits`, ...), a list of records
with --search. "Does not fit" is a record with fits=false, not an error. --out also writes the
JSON to a file. The full 456B model takes 5-10 minutes and ~8 GiB of host RAM per compile on 2
cores.
"""
import json
import os

# Compile-only TPU: keep the CPU as the default backend (no CUDA probing, no TPU init).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from m1jax import config_overrides  # noqa: E402

_CONFIG = config_overrides.define_config_file(
    "config", "configs/minimax_m1_456b.py",
    "A configs/*.py file; --config.mesh, --config.model.* etc. override it.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:8x8x8",
                                "jax.experimental.topologies name: v5p:AxBxC, v5e:AxB, v6e:AxB")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 0, "tokens per row; 0 = config.train.seq_len")
_BATCH = flags.DEFINE_integer("batch", 0, "rows per microbatch (global); 0 = one row per batch "
                              "shard (data*fsdp*expert), i.e. one sequence per chip group")
_ACCUM = flags.DEFINE_integer("accum_steps", 1, "microbatches per optimizer step")
_MFU = flags.DEFINE_float("mfu", 0.4, "model-FLOPs utilisation assumed for the step time")
_SEARCH = flags.DEFINE_bool("search", False, "try m1jax.plan.SEARCH_MESHES; print a table")
_OUT = flags.DEFINE_string("out", "", "also write the JSON here (atomically)")


def _write_json(path: str, value) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from m1jax import plan
  config = _CONFIG.value
  kwargs = dict(seq_len=_SEQ_LEN.value, batch=_BATCH.value, accum_steps=_ACCUM.value,
                mfu=_MFU.value)
  try:
    if _SEARCH.value:
      result = plan.search_meshes(config, _TOPOLOGY.value, **kwargs)
      for record in result:
        if "skipped" not in record:
          print(plan.format_record(record), flush=True)
      print(plan.format_table(result))
    else:
      result = plan.plan(config, _TOPOLOGY.value, **kwargs)
      print(plan.format_record(result))
  except plan.PlanInputError as e:
    raise app.UsageError(str(e)) from None
  if _OUT.value:
    _write_json(_OUT.value, result)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=config_overrides.parse_flags)
