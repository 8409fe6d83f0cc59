"""The pod planner: the full train step compiled ahead of time for a TPU topology, from a CPU.

    record = plan(config, "v5p:8x8x8", mesh="fsdp=64,expert=8")
    record["fits"], record["per_chip_bytes"], record["hbm_bytes"]

libtpu compiles the trainer's own jitted step (m1jax.train.step.make_train_step: donated state,
the chunked loss, remat and the configured attention implementation) for the topology's
abstract devices; the state is m1jax.train.state.abstract_train_state (ShapeDtypeStructs that
carry their shardings), so no parameter is ever allocated. The record gives the per-chip bytes
of `compiled.memory_analysis()`, the chip's HBM as the TPU compiler states it, the compile time,
analytic FLOPs (m1jax.flops) and an MFU-based step-time estimate. A program that does not fit
comes back as a record with fits=False and the compiler's figures, not as an exception.

Bad input (unknown topology, a mesh that is not the topology's chip count, experts or the
sequence length not divisible by their axes, a batch that does not split) raises ValueError
before anything is compiled.
"""
import dataclasses
import math
import os
import re
import resource
import time
from typing import Any, Optional

# The chips the planner knows: bf16 dense peak FLOP/s per chip (public spec sheets) and the
# HBM per chip the TPU compiler reported here (libtpu's RESOURCE_EXHAUSTED message; used only
# when the probe in `hbm_bytes` cannot read it from the installed libtpu).
_GIB = 1 << 30


class PlanInputError(ValueError):
  """Bad planner input (topology, mesh, batch, lengths): the message names the flag."""


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  peak_bf16_flops: float
  hbm_gib_fallback: float


CHIPS = {
    "v5e": Chip("TPU v5e", 197e12, 15.75),
    "v5p": Chip("TPU v5p", 459e12, 95.73),
    "v6e": Chip("TPU v6e", 918e12, 31.24),
}
_TOPOLOGY_RE = re.compile(r"^(v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
TOPOLOGY_FORMS = ("v5e:AxB (e.g. v5e:16x16)", "v6e:AxB (e.g. v6e:16x16)",
                  "v5p:AxBxC (e.g. v5p:2x2x2, v5p:8x8x4, v5p:8x8x8)")

# Meshes `--search` tries (those that do not divide the chips or the experts are skipped).
SEARCH_MESHES = ("fsdp=-1", "fsdp=-1,expert=8", "fsdp=-1,expert=4", "fsdp=-1,expert=8,sequence=2",
                 "fsdp=-1,expert=8,tensor=2")


def _tpu_env() -> None:
  """libtpu without a TPU: skip the metadata-server query, allow other libtpu users."""
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
  """"v5p:8x8x8" -> ("v5p", (8, 8, 8)). Raises ValueError listing the valid forms."""
  match = _TOPOLOGY_RE.match(name or "")
  dims = tuple(int(d) for d in match.group(2).split("x")) if match else ()
  want = 3 if match and match.group(1) == "v5p" else 2
  if not match or len(dims) != want or min(dims) < 1:
    raise PlanInputError(f"--topology={name!r} is not a TPU topology this planner knows; valid "
                     f"forms: {'; '.join(TOPOLOGY_FORMS)}")
  return match.group(1), dims


def topology_devices(name: str) -> list:
  """The abstract TPU devices of topology `name` (jax.experimental.topologies, no TPU)."""
  parse_topology(name)
  _tpu_env()
  import jax
  from jax.experimental import topologies
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
  except jax.errors.JaxRuntimeError as e:
    raise PlanInputError(f"--topology={name!r}: libtpu refuses it ({str(e).splitlines()[0]}); "
                     f"valid forms: {'; '.join(TOPOLOGY_FORMS)}") from None


_OOM_RE = re.compile(r"(?:required for HLO temporaries|Used) \(?([\d.]+)([KMGT]?)\)?.*?"
                     r"(?:available HBM \(|of )([\d.]+)([KMGT]?)", re.S)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_oom(message: str) -> Optional[tuple[int, int]]:
  """(bytes required, bytes available) from libtpu's RESOURCE_EXHAUSTED text, else None.
  libtpu prints two decimals of a 1024-based unit, so both are good to about 0.01 GiB."""
  m = _OOM_RE.search(message)
  if not m:
    return None
  return (int(float(m.group(1)) * _UNITS[m.group(2)]),
          int(float(m.group(3)) * _UNITS[m.group(4)]))


def hbm_bytes(devices, kind: str) -> tuple[int, str]:
  """(HBM bytes per chip, where the figure comes from). The compiler's own limit, read from
  the message of a tiny program that asks for far too much (memory_stats() needs a real
  device); the table's figure when that message cannot be read."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  x = jax.ShapeDtypeStruct((1 << 20,), jnp.float32,
                           sharding=NamedSharding(Mesh(np.asarray(devices[:1]), ("x",)),
                                                  PartitionSpec()))

  def too_big(x):  # a 1 TiB temporary: sorting keeps it from being fused away
    y = jnp.broadcast_to(x, (1 << 18, 1 << 20)) + jnp.arange(1 << 18, dtype=x.dtype)[:, None]
    return jnp.sort(y, axis=0)

  try:
    jax.jit(too_big).lower(x).compile()
  except jax.errors.JaxRuntimeError as e:
    parsed = parse_oom(str(e))
    if parsed:
      return parsed[1], "the TPU compiler's limit"
  return int(CHIPS[kind].hbm_gib_fallback * _GIB), "table (compiler limit not readable)"


def check_plan_inputs(model_config, mesh_sizes: dict, seq_len: int, batch: int,
                      mesh_spec: str) -> None:
  """Raises ValueError for what the compile would otherwise reject obscurely."""
  expert, sequence = mesh_sizes["expert"], mesh_sizes["sequence"]
  if model_config.num_local_experts % expert:
    raise PlanInputError(f"mesh {mesh_spec!r}: expert={expert} does not divide "
                     f"model.num_local_experts={model_config.num_local_experts}")
  if seq_len % sequence:
    raise PlanInputError(f"mesh {mesh_spec!r}: sequence={sequence} does not divide the sequence "
                     f"length {seq_len} (--seq_len)")
  ways = mesh_sizes["data"] * mesh_sizes["fsdp"] * expert
  if batch % ways:
    raise PlanInputError(f"mesh {mesh_spec!r}: the batch of {batch} rows (--batch) does not split "
                     f"over data*fsdp*expert = {ways}")


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes),
         "temp_bytes": int(m.temp_size_in_bytes),
         "generated_code_bytes": int(m.generated_code_size_in_bytes)}
  # Outputs aliased to donated arguments occupy the arguments' buffers: count them once.
  out["per_chip_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                           + out["temp_bytes"] + out["generated_code_bytes"])
  return out


def plan(config, topology: str, *, mesh: Optional[str] = None, seq_len: int = 0,
         batch: int = 0, accum_steps: int = 1, mfu: float = 0.4, devices=None) -> dict:
  """Compiles the full train step of `config` for `topology`; a JSON-able record.

  Args:
    config: the ml_collections config (model, optimizer, train sections).
    topology: a jax.experimental.topologies name, e.g. "v5p:8x8x8".
    mesh: mesh spec (m1jax.sharding.make_mesh); default config.mesh.
    seq_len: tokens per row; 0 = config.train.seq_len.
    batch: rows per microbatch (global); 0 = one row per batch shard (data*fsdp*expert).
    accum_steps: microbatches per optimizer step (the step's scan runs over them).
    mfu: the model-FLOPs utilisation assumed for the step-time estimate.
    devices: the topology's devices, when the caller already has them.
  """
  kind, dims = parse_topology(topology)
  if not 0 < mfu <= 1:
    raise PlanInputError(f"--mfu={mfu}: must be in (0, 1]")
  if accum_steps < 1 or batch < 0 or seq_len < 0:
    raise PlanInputError(f"accum_steps={accum_steps}, batch={batch}, seq_len={seq_len}: "
                     "accum_steps >= 1, batch and seq_len >= 0 (0 = default)")
  mesh_spec = mesh if mesh is not None else config.get("mesh", "fsdp=-1")
  seq_len = seq_len or config.train.seq_len

  from m1jax import sharding
  from m1jax.config import ModelConfig
  model_config = ModelConfig.from_dict(config.model.to_dict())
  chips = math.prod(dims)
  try:
    shape = sharding.mesh_shape(mesh_spec, chips)
  except ValueError as e:
    raise PlanInputError(f"--topology={topology} has {chips} chips: {e}") from None
  sizes = dict(zip(sharding.MESH_AXES, shape))
  batch = batch or sizes["data"] * sizes["fsdp"] * sizes["expert"]
  check_plan_inputs(model_config, sizes, seq_len, batch, mesh_spec)

  devices = topology_devices(topology) if devices is None else devices
  import jax
  import jax.numpy as jnp
  from m1jax import flops
  from m1jax.model import MiniMaxM1ForCausalLM
  from m1jax.train.optimizer import make_optimizer
  from m1jax.train.state import abstract_train_state, state_shardings
  from m1jax.train.step import batch_sharding, check_batch, make_train_step

  mesh_obj = sharding.make_mesh(mesh_spec, devices)
  model = MiniMaxM1ForCausalLM(model_config)
  tx, _ = make_optimizer(config.optimizer, config.train.num_steps)
  try:  # a batch or a weight dimension that does not divide over its mesh axes
    check_batch(mesh_obj, batch * accum_steps, seq_len, accum_steps)
    shardings = state_shardings(model, tx, mesh_obj)
  except ValueError as e:
    raise PlanInputError(str(e)) from None
  state = abstract_train_state(model, tx, mesh_obj, shardings)
  rows = jax.ShapeDtypeStruct((batch * accum_steps, seq_len), jnp.int32,
                              sharding=batch_sharding(mesh_obj))
  batch_args = {k: rows for k in ("tokens", "positions", "segment_ids", "loss_mask")}
  step = make_train_step(model, tx, mesh_obj, shardings, accum_steps=accum_steps,
                         aux_coef=model_config.router_aux_loss_coef,
                         loss_chunk_tokens=config.train.loss_chunk_tokens)

  # What the arguments hold, counted from the shardings (TPU pads some buffers: a scalar
  # takes 512 bytes), for the record and for a program the compiler rejects.
  arg_bytes = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                  for x in jax.tree.leaves((state, batch_args)))
  hbm, hbm_source = hbm_bytes(devices, kind)
  tokens = batch * accum_steps * seq_len
  step_flops = flops.train_flops_per_step(model_config, seq_len, batch * accum_steps)
  peak = CHIPS[kind].peak_bf16_flops
  record: dict[str, Any] = {
      "topology": topology, "chip": CHIPS[kind].name, "chips": chips,
      "mesh": sharding.describe(mesh_obj), "seq_len": seq_len,
      "batch_rows": batch * accum_steps, "accum_steps": accum_steps,
      "tokens_per_step": tokens, # `tensor` splits no token: its chips share theirs.
      "tokens_per_chip_per_microstep": batch * seq_len * sizes["tensor"] // chips,
      "layers": model_config.num_hidden_layers, "param_dtype": model_config.param_dtype,
      "dtype": model_config.dtype, "remat": model_config.remat,
      "attention_impl": model_config.attention_impl,
      "lightning_impl": model_config.lightning_impl, "moe_impl": model_config.moe_impl,
      "loss_chunk_tokens": config.train.loss_chunk_tokens,
      "params": sum(math.prod(x.shape) for x in jax.tree.leaves(state.params)),
      "hbm_bytes": hbm, "hbm_source": hbm_source, "analytic_argument_bytes": arg_bytes,
      "train_flops_per_token": flops.train_flops_per_token(model_config, seq_len),
      "train_flops_per_step": step_flops, "peak_flops_per_chip": peak, "assumed_mfu": mfu,
      "step_seconds_estimate": step_flops / (chips * peak * mfu),
  }
  start = time.perf_counter()
  try:
    with sharding.use_mesh(mesh_obj):
      compiled = step.jitted.lower(state, batch_args).compile()
  except NotImplementedError as e:
    if "Mosaic kernels cannot be automatically partitioned" not in str(e):
      raise
    # A Pallas TPU kernel the model runs outside a shard_map (the lightning layer wraps its
    # kernel in one on any multi-device mesh; this guards any other): the configured impl
    # cannot run on this mesh.
    raise PlanInputError(
        f"mesh {sharding.describe(mesh_obj)}: a Pallas (Mosaic) kernel of the configured "
        f"implementations (lightning_impl={model_config.lightning_impl!r}, moe_impl="
        f"{model_config.moe_impl!r}) runs outside a shard_map, which XLA cannot partition; "
        "choose a pure-XLA one, e.g. --config.model.lightning_impl=chunked") from None
  except jax.errors.JaxRuntimeError as e:
    text = str(e)
    parsed = parse_oom(text) if "RESOURCE_EXHAUSTED" in text else None
    if parsed is None:
      raise
    # The compiler stops at the temporaries; the arguments come from the shardings.
    record.update(compiled=False, fits=False, temp_bytes=parsed[0],
                  per_chip_bytes=parsed[0] + arg_bytes,
                  error=text.strip().splitlines()[0][:400])
  else:
    record.update(compiled=True, **_memory(compiled))
    record["fits"] = record["per_chip_bytes"] <= hbm
  record["compile_seconds"] = round(time.perf_counter() - start, 1)
  record["host_peak_rss_gib"] = round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 2)
  return record


def search_meshes(config, topology: str, **kwargs) -> list[dict]:
  """`plan` for each of SEARCH_MESHES that applies; a mesh that cannot apply gives a record
  with its reason (`skipped`)."""
  devices = None
  records = []
  for spec in SEARCH_MESHES:
    try:
      if devices is None:
        devices = topology_devices(topology)
      records.append(plan(config, topology, mesh=spec, devices=devices, **kwargs))
    except PlanInputError as e:
      records.append({"mesh": spec, "skipped": str(e)})
  return records


def gib(n: float) -> str:
  return f"{n / _GIB:.2f} GiB"


def format_record(r: dict) -> str:
  """The human-readable report of one plan."""
  lines = [f"topology {r['topology']} ({r['chips']} x {r['chip']}), mesh {r['mesh']}",
           f"  {r['layers']} layers, params {r['params'] / 1e9:.2f}B ({r['param_dtype']} + "
           f"AdamW moments), compute {r['dtype']}, remat {r['remat']}, attention "
           f"{r['attention_impl']}, lightning {r['lightning_impl']}, loss chunk "
           f"{r['loss_chunk_tokens']}",
           f"  batch {r['batch_rows']} x {r['seq_len']} tokens = {r['tokens_per_step']:,} "
           f"tokens/step ({r['accum_steps']} microbatch(es), "
           f"{r['tokens_per_chip_per_microstep']} tokens per chip per microbatch)"]
  if r["compiled"]:
    lines += [f"  per chip: arguments {gib(r['argument_bytes'])}, temporaries "
              f"{gib(r['temp_bytes'])}, outputs {gib(r['output_bytes'])} (aliased to donated "
              f"arguments {gib(r['alias_bytes'])}), code {gib(r['generated_code_bytes'])}",
              f"  total {gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes'])} HBM "
              f"({r['hbm_source']})",
              f"fits: {str(r['fits']).lower()}"]
  else:
    lines += [f"  per chip: temporaries {gib(r['temp_bytes'])} (the compiler's figure) + "
              f"arguments {gib(r['analytic_argument_bytes'])} (from the shardings) = "
              f"{gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes'])} HBM", "fits: false",
              f"  compiler: {r['error']}"]
  lines += [f"  compile {r['compile_seconds']} s (host peak RSS {r['host_peak_rss_gib']} GiB)",
            f"  analytic FLOPs: {r['train_flops_per_token'] / 1e9:.1f} GFLOP/token, "
            f"{r['train_flops_per_step']:.3e} per step",
            f"  step time at {r['assumed_mfu']:.0%} MFU of {r['peak_flops_per_chip'] / 1e12:.0f}"
            f" TFLOP/s bf16 per chip: {r['step_seconds_estimate']:.2f} s "
            f"({r['tokens_per_step'] / r['step_seconds_estimate'] / r['chips']:.0f} "
            f"tokens/s/chip)"]
  return "\n".join(lines)


def format_table(records: list[dict]) -> str:
  """A markdown table of `search_meshes` records."""
  head = ("| mesh | tokens/chip | args GiB | temp GiB | total GiB | HBM GiB | fits | compile s |\n"
          "|---|---|---|---|---|---|---|---|")
  rows = []
  for r in records:
    if "skipped" in r:
      rows.append(f"| {r['mesh']} | skipped: {r['skipped']} |||||||")
      continue
    args = r["argument_bytes" if r["compiled"] else "analytic_argument_bytes"] / _GIB
    temp = r["temp_bytes"] / _GIB
    rows.append(f"| {r['mesh']} | {r['tokens_per_chip_per_microstep']} | {args:.2f} | {temp:.2f} | "
                f"{r['per_chip_bytes'] / _GIB:.2f} | {r['hbm_bytes'] / _GIB:.2f} | "
                f"{r['fits']} | {r['compile_seconds']} |")
  return "\n".join([head] + rows)
