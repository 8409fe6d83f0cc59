"""CPU gates for the GPU lightning kernels: lowering for cuda, and a deviceless H100 compile.

  python -m experiments.aot_lightning_gpu                      # every candidate + Mosaic, JSON
  python -m experiments.aot_lightning_gpu --mode=lower         # lowering only (no plugin)
  python -m experiments.aot_lightning_gpu --configs=none       # the Mosaic GPU kernel only

(a) `lower`: `jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))` on the CPU jaxlib
    runs the whole Pallas -> Triton-IR (or Mosaic GPU) lowering. jax >= 0.11's Triton
    lowering asks for the GPU's compute capability, so it runs inside
    `use_abstract_mesh` of an abstract H100 (`H100_ABSTRACT_MESH`).
(b) `compile`: with jax-cuda12-plugin + jax-cuda12-pjrt (requirements-test.txt), a
    compile-only CUDA topology for an H100 target config runs XLA's GPU pipeline, Triton's
    TTIR -> PTX -> cubin and ptxas on CPU: shared-memory overflows and ptxas errors surface
    here. Each Triton kernel's grid, threads and shared memory come from XLA's dump (its
    thunk sequence), its registers and stack from its cubin (XLA's kernel cache file); each
    Mosaic GPU kernel's from ptxas -v and Mosaic's resource report
    (experiments/gpu_kernel_resources.py).
Shapes: the benchmark's B=4, T=8192, H=16, D=128, bf16 (fp32 slope and state).
Writes benchmarks/results/aot_lightning_gpu.json.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime  # noqa: E402
import functools  # noqa: E402
import glob  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402
from jax._src.mesh import AbstractDevice, AbstractMesh  # noqa: E402

from experiments import gpu_kernel_resources as gkr  # noqa: E402
from pallas_kernels import lightning_gpu  # noqa: E402
from pallas_kernels.lightning_gpu_ops import lightning_attention_gpu  # noqa: E402
from pallas_kernels.lightning_triton import BlockSizes  # noqa: E402
from pallas_kernels.lightning_triton_ops import lightning_attention_triton  # noqa: E402

H100_KIND = "NVIDIA H100 80GB HBM3"
H100_ABSTRACT_MESH = AbstractMesh(
    (1,), ("x",), (AxisType.Explicit,),
    abstract_device=AbstractDevice(device_kind=H100_KIND, num_cores=132, platform="cuda"))

# GpuTargetConfig text proto of an H100 SXM (WORKSPACE_NOTES.md, "Issue 12").
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584
  shared_memory_per_block_optin: 232448 cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA" dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""

SHAPE_BTHD = (4, 8192, 16, 128)
# The sweep's candidate configs (chunk, split, num_warps, num_stages); `compile` prunes those
# that do not fit an H100 and the sweep reads SWEEP_CONFIGS.
CANDIDATE_CONFIGS = [BlockSizes(c, s, w, st) for c, s, w, st in
                     itertools.product((64, 128), (64, 32), (4, 8), (2, 3))]
# Candidates that failed the deviceless H100 compile (benchmarks/results/aot_lightning_gpu.json).
FAILS_H100_COMPILE = {(128, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (128, 32, 8, 3)}
SWEEP_CONFIGS = [b for b in CANDIDATE_CONFIGS
                 if (b.chunk, b.split, b.num_warps, b.num_stages) not in FAILS_H100_COMPILE]


# The Mosaic GPU kernel's configs: C = 64 (wgmma's M; at C = 128 its SMEM exceeds 227 KiB).
MOSAIC_CONFIGS = [lightning_gpu.BlockSizes(64)]
# Custom calls per program: Triton fwd 1, fwd+bwd 1 + 3; Mosaic fwd 1, fwd+bwd 1 + 2 (dq, dkdv).
CUSTOM_CALL = {"triton": "__gpu$xla.gpu.triton", "mosaic": "@mosaic_gpu_v2"}
CALLS = {("triton", "fwd"): 1, ("triton", "fwd_bwd"): 4,
         ("mosaic", "fwd"): 1, ("mosaic", "fwd_bwd"): 3}


def programs(block_sizes, shape_BTHD=SHAPE_BTHD, dtype=jnp.bfloat16,
             segmented: bool = False, kernel: str = "triton"):
  """{"fwd": (fn, args), "fwd_bwd": (fn, args)} of the Triton (block_sizes a
  lightning_triton.BlockSizes) or Mosaic GPU kernel (a lightning_gpu.BlockSizes), as
  ShapeDtypeStructs, compiled (interpret=False)."""
  attention = {"triton": lightning_attention_triton, "mosaic": lightning_attention_gpu}[kernel]
  b, t, h, d = shape_BTHD
  q = jax.ShapeDtypeStruct(shape_BTHD, dtype)
  slope = jax.ShapeDtypeStruct((h,), jnp.float32)
  state = jax.ShapeDtypeStruct((b, h, d, d), jnp.float32)
  seg = jax.ShapeDtypeStruct((b, t), jnp.int32)

  def fwd(q, k, v, slope, state, seg):
    return attention(q, k, v, slope, initial_state=state, block_sizes=block_sizes,
                     interpret=False, segment_ids=seg if segmented else None)

  def fwd_bwd(q, k, v, slope, state, seg, d_out, d_state):
    outs, pullback = jax.vjp(functools.partial(fwd, seg=seg), q, k, v, slope, state)
    return outs, pullback((d_out, d_state))

  return {"fwd": (fwd, (q, q, q, slope, state, seg)),
          "fwd_bwd": (fwd_bwd, (q, q, q, slope, state, seg, q, state))}


def lower_for_cuda(fn, args):
  """(lowered, seconds): Pallas lowering for cuda on the CPU jaxlib."""
  t0 = time.perf_counter()
  with jax.sharding.use_abstract_mesh(H100_ABSTRACT_MESH):
    lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
  return lowered, time.perf_counter() - t0


@functools.cache
def h100_mesh():
  """A one-device compile-only CUDA mesh (needs jax-cuda12-plugin; no GPU, no driver)."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  topo = topologies.get_topology_desc(platform="cuda", target_config=H100_TARGET_CONFIG,
                                      topology="1x1x1")
  return topologies.make_mesh(topo=topo, mesh_shape=(1,), axis_names=("x",))


def compile_for_h100(fn, args, **compiler_options):
  """(compiled, seconds) of a deviceless AOT compile for the H100 target; `compiler_options`
  are XLA debug options for this compile (e.g. xla_gpu_kernel_cache_file)."""
  mesh = h100_mesh()
  placed = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P()))
            for a in args]
  t0 = time.perf_counter()
  with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
    compiled = jax.jit(fn).lower(*placed).compile(compiler_options=compiler_options or None)
  return compiled, time.perf_counter() - t0


_THUNK = re.compile(r"kCustomKernel.*?(lightning_\w+) grid: \[([\d, ]+)\] "
                    r"threads: \[([\d, ]+)\]\s+shared_memory: (\d+) bytes")


def kernel_resources(dump_dir: str) -> list:
  """Per Triton kernel of the last compile dumped to `dump_dir` (XLA_FLAGS=--xla_dump_to):
  name, grid, threads per block and shared memory, from XLA's thunk sequence."""
  files = sorted(glob.glob(os.path.join(dump_dir, "*.thunk_sequence.txt")), key=os.path.getmtime)
  if not files:
    return []
  with open(files[-1]) as f:
    text = f.read()
  return [{"kernel": m.group(1), "grid": [int(x) for x in m.group(2).split(",")],
           "threads": int(m.group(3).split(",")[0]), "shared_memory_bytes": int(m.group(4))}
          for m in _THUNK.finditer(text)]


_SMEM_SCRATCH = re.compile(r"smem_scratch_bytes=(\d+)")


def _compile_with_resources(fn, args, kernel: str) -> dict:
  """Compiles for the H100 and returns the per-kernel resources: registers and stack per
  kernel (gpu_kernel_resources), plus Triton's grid/threads/SMEM from XLA's dump or
  Mosaic's SMEM scratch from its resource report."""
  if kernel == "triton":
    cache = os.path.join(_DUMP_DIR, "kernel_cache.bin")
    if os.path.exists(cache):
      os.remove(cache)  # XLA appends; one compile's kernels per file
    _, secs = compile_for_h100(fn, args, xla_gpu_kernel_cache_file=cache)
    regs = gkr.kernel_cache_resources(cache)
    kernels = [{**k, **regs.get(k["kernel"], {})} for k in kernel_resources(_DUMP_DIR)]
    return {"compile_s": round(secs, 2), "kernels": kernels}
  with gkr.captured_output() as out:
    _, secs = compile_for_h100(fn, args)
  names = {"fwd": ["fwd"], "fwd_bwd": ["fwd", "bwd_dq", "bwd_dkdv"]}
  reports = gkr.ptxas_reports(out[0])
  smem = [int(x) for x in _SMEM_SCRATCH.findall(out[0])]
  kernels = [{**r, "kernel": f"lightning_{n}_mosaic",
              **({"shared_memory_bytes": smem[i]} if i < len(smem) else {})}
             for i, (n, r) in enumerate(zip(names[fn.__name__], reports))]
  return {"compile_s": round(secs, 2), "kernels": kernels}


def config_record(block_sizes, mode: str, *, do_compile: bool, kernel: str = "triton") -> list:
  if kernel == "triton":
    key = dict(kernel=kernel, chunk=block_sizes.chunk, split=block_sizes.split,
               num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)
  else:
    key = dict(kernel=kernel, chunk=block_sizes.block_t)
  rows = []
  for prog, (fn, args) in programs(block_sizes, kernel=kernel).items():
    row = {**key, "program": prog}
    try:
      lowered, secs = lower_for_cuda(fn, args)
      row.update(lowered=True, lower_s=round(secs, 2),
                 custom_calls=lowered.as_text().count(CUSTOM_CALL[kernel]))
    except Exception as e:  # noqa: BLE001 - a failure is the result
      row.update(lowered=False, error=f"{type(e).__name__}: {e}"[:400])
      rows.append(row)
      continue
    if do_compile:
      try:
        row.update(compiled=True, **_compile_with_resources(fn, args, kernel))
      except Exception as e:  # noqa: BLE001
        row.update(compiled=False, error=f"{type(e).__name__}: {e}"[:400])
    rows.append(row)
  return rows


# XLA's dump holds each Triton kernel's launch shape and shared memory (kernel_resources).
_DUMP_DIR = os.environ.get("M1JAX_GPU_AOT_DUMP", "/tmp/m1jax_gpu_aot_dump")


def main():
  import argparse  # pylint: disable=g-import-not-at-top
  # Set before the first compile (XLA reads its flags when a backend starts).
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={_DUMP_DIR}"
                             " --xla_dump_hlo_module_re=jit_fwd.*").strip()
  # Mosaic GPU's compile prints ptxas -v and its SMEM scratch (read per compile).
  os.environ["MOSAIC_GPU_DUMP_PTXAS"] = "1"
  os.environ["MOSAIC_GPU_DUMP_RESOURCES"] = "1"
  parser = argparse.ArgumentParser()
  parser.add_argument("--mode", choices=("lower", "compile"), default="compile")
  parser.add_argument("--out", default="benchmarks/results/aot_lightning_gpu.json")
  parser.add_argument("--configs", choices=("candidates", "sweep", "default", "none"),
                      default="candidates", help="Triton configs")
  parser.add_argument("--mosaic", choices=("yes", "no"), default="yes",
                      help="also the Mosaic GPU kernel (MOSAIC_CONFIGS)")
  args = parser.parse_args()
  configs = {"candidates": CANDIDATE_CONFIGS, "sweep": SWEEP_CONFIGS,
             "default": [BlockSizes()], "none": []}[args.configs]
  jobs = [(bs, "triton") for bs in configs]
  jobs += [(bs, "mosaic") for bs in MOSAIC_CONFIGS] if args.mosaic == "yes" else []
  rows = []
  for bs, kernel in jobs:
    rows += config_record(bs, args.mode, do_compile=args.mode == "compile", kernel=kernel)
    print(json.dumps(rows[-2:]), flush=True)
  result = {"what": "CPU lowering for cuda / deviceless H100 compile of "
                    "pallas_kernels.lightning_triton and lightning_gpu (Mosaic GPU); "
                    "registers/stack per kernel from the cubin (Triton) or ptxas -v (Mosaic)",
            "target": H100_KIND,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "jax": jax.__version__, "shape_BTHD": list(SHAPE_BTHD), "dtype": "bfloat16",
            "rows": rows}
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
