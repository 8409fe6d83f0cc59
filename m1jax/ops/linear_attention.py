"""`lightning_attention`: the operator, its input checks and its implementation table.

Math (docs/MODEL.md §6.3; no normalizer, no 1/sqrt(D) scaling), per batch row and head, with
decay lambda = exp(-slope):

  S_t = lambda * S_{t-1} + k_t^T v_t        # [D, D] state, includes the current token
  o_t = q_t S_t

Implementations (`IMPLEMENTATIONS`, one explicit table below):
  "naive":         the O(T^2) masked form (linear_attention_reference.py).
  "recurrent":     a `lax.scan` over tokens of `lightning_decode_step` (the decode path).
  "chunked":       a `lax.scan` over blocks of C tokens carrying the fp32 state
                   (linear_attention_chunked.py; prefill, training, and the fallback).
  "chunked_parallel": the same blocks with no scan: the state entering every block in
                   closed form, all blocks as batched einsums (linear_attention_parallel.py;
                   packed documents run "chunked"). auto's CPU choice where measured faster.
  "pallas_tpu":    the Pallas Mosaic TPU kernels (pallas_kernels/lightning_tpu.py).
  "pallas_gpu":    the Pallas Mosaic GPU kernels (pallas_kernels/lightning_gpu.py).
  "pallas_triton": the Pallas-Triton GPU kernels (pallas_kernels/lightning_triton.py).
Every implementation takes `segment_ids` (packed documents). Kernel modules are imported on
first use, so `import m1jax` never loads Pallas.

"auto" is fail-closed: it picks a kernel only where the table's `status` for the target
platform is VERIFIED (the kernel compiled for that hardware and passed the numerics tests;
evidence in WORKSPACE_NOTES.md, "Issue 12") and only for inputs its tests cover
(`_kernel_supported`); otherwise `_fallback` ("chunked_parallel" on CPU for blocks of at most
128 and T of at least two blocks, else "chunked"). The choice is logged once per shape at
INFO.
"""
import dataclasses
import importlib
import logging
import operator
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from m1jax.ops.linear_attention_chunked import DEFAULT_BLOCK_SIZE, chunked
from m1jax.ops.linear_attention_parallel import chunked_parallel
from m1jax.ops.linear_attention_reference import (document_runs, lightning_decode_step, naive,
                                                  recurrent)
from pallas_kernels import lightning_chunk

Array = jax.Array
_F32 = jnp.float32

__all__ = ["DEFAULT_BLOCK_SIZE", "IMPLEMENTATIONS", "TABLE", "lightning_attention",
           "lightning_decode_step"]

_log = logging.getLogger("m1jax.ops")

# Status of a kernel on a platform: VERIFIED is the only value that lets "auto" pick it.
VERIFIED = "verified"


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One row of the table.

  run: (q, k, v, slope_H f32, state f32 or None, block_size, segment_ids or None)
    -> (out, final_state); kernels import their module on first call.
  status: platform ("tpu", "gpu", "cpu") -> VERIFIED or the reason it is not; "auto" picks
    the kernel on a platform only when VERIFIED there. Empty for the pure-JAX references.
  chunk_rule: for kernels, what block sizes they take ("multiple16" or "pow2").
  blocked: platform -> why an explicit impl= cannot run there (it raises ValueError).
  """
  run: Callable[..., tuple[Array, Array]]
  status: dict = dataclasses.field(default_factory=dict)
  chunk_rule: Optional[str] = None
  blocked: dict = dataclasses.field(default_factory=dict)

  @property
  def is_kernel(self) -> bool:
    return self.chunk_rule is not None


def _reference(fn):
  def run(q, k, v, slope_H, state_BHDD, block_size, segment_ids=None):
    runs = None if segment_ids is None else document_runs(segment_ids)
    return fn(q, k, v, slope_H, state_BHDD, block_size, runs)
  return run


def _kernel(module_name: str):
  def run(q, k, v, slope_H, state_BHDD, block_size, segment_ids=None):
    # Imported on first use so `import m1jax` stays cheap and never loads Pallas.
    module = importlib.import_module(module_name)
    return module.operator_impl(q, k, v, slope_H, state_BHDD, block_size, segment_ids)
  return run



# THE table: name -> implementation, evidence per platform, block-size rule.
TABLE: dict[str, Implementation] = {
    "naive": Implementation(_reference(naive)),
    "recurrent": Implementation(_reference(recurrent)),
    "chunked": Implementation(_reference(chunked)),
    "chunked_parallel": Implementation(_reference(chunked_parallel)),
    "pallas_tpu": Implementation(
        _kernel("pallas_kernels.lightning_tpu_ops"),
        status={"tpu": VERIFIED,  # libtpu AOT compile (v5e/v5p/v6e) + TPU interpret numerics
                "gpu": "never run on a GPU", "cpu": "interpret mode only"},
        chunk_rule="multiple16"),
    "pallas_gpu": Implementation(
        _kernel("pallas_kernels.lightning_gpu_ops"),
        # Compiled: bf16 only (the kernel raises ValueError for float32 on a GPU).
        status={"gpu": "lowers and compiles (bf16) for an H100 on CPU; never run on a GPU",
                "tpu": "GPU kernel", "cpu": "interpret mode only"},
        chunk_rule="multiple16"),
    "pallas_triton": Implementation(
        _kernel("pallas_kernels.lightning_triton_ops"),
        status={"gpu": "lowers and compiles for an H100 on CPU; never run on a GPU",
                "tpu": "GPU kernel", "cpu": "interpret mode only"},
        chunk_rule="pow2"),
}

# Name -> implementation (the operator's calling convention), for callers and tests.
IMPLEMENTATIONS: dict[str, Callable[..., tuple[Array, Array]]] = {
    name: entry.run for name, entry in TABLE.items()}

# "auto" tries these, in order of preference, before falling back to `_fallback`.
AUTO_ORDER = ("pallas_tpu", "pallas_triton", "pallas_gpu")
# Pure-JAX choice of "auto" where no kernel applies (`_fallback`). On CPU chunked_parallel
# beat the scan with blocks of at most 128 and at least two full blocks (T 4096, C 64: 1.3x
# forward, 1.5x forward+backward; T 256, C 128: 1.3x); with one block (T <= C) or blocks of
# 256 the scan was as fast or faster (T 4096, C 256: forward 19 vs 27 ms), so it stays there
# (WORKSPACE_NOTES.md, issue 16). Elsewhere unmeasured: the scan.
PARALLEL_MAX_BLOCK = 128


def _fallback(platform: str, inputs: tuple) -> str:
  """"chunked_parallel" or "chunked" for `inputs` = (q, k, v, slope, state, block_size)."""
  if platform != "cpu" or len(inputs) < 6 or jnp.ndim(inputs[0]) != 4:
    return "chunked"
  block = DEFAULT_BLOCK_SIZE if inputs[5] is None else inputs[5]
  if block <= PARALLEL_MAX_BLOCK and inputs[0].shape[1] >= 2 * block:
    return "chunked_parallel"
  return "chunked"


def _platform() -> str:
  """The target platform in the table's vocabulary ("gpu" for cuda and rocm)."""
  platform = lightning_chunk.target_platform()
  return "gpu" if platform in lightning_chunk.GPU_PLATFORMS else platform


def _chunk_ok(rule: str, block_size: Optional[int]) -> bool:
  if block_size is None:
    return True
  if rule == "pow2":
    return block_size >= 16 and block_size & (block_size - 1) == 0
  return True  # multiple16 kernels round any block size up


def _kernel_supported(entry: Implementation, q, k, v, slope, initial_state, block_size,
                      segment_ids) -> bool:
  """The inputs the kernels' tests cover: [B,T,H,D] with T >= 1, D 64/128, f32/bf16, [H]
  slope, [B,H,D,D] state, int [B,T] segment ids, and the kernel's block-size rule."""
  if q.ndim != 4 or not (q.shape == k.shape == v.shape) or not (q.dtype == k.dtype == v.dtype):
    return False
  b, t, h, d = q.shape
  if jnp.dtype(q.dtype) not in lightning_chunk.SUPPORTED_DTYPES or t < 1:
    return False
  if d not in lightning_chunk.SUPPORTED_HEAD_DIMS or jnp.shape(slope) != (h,):
    return False
  if initial_state is not None and jnp.shape(initial_state) != (b, h, d, d):
    return False
  if segment_ids is not None and (
      jnp.shape(segment_ids) != (b, t)
      or not jnp.issubdtype(jnp.result_type(segment_ids), jnp.integer)):
    return False
  return _chunk_ok(entry.chunk_rule, block_size)


_LOGGED: set = set()


def _log_choice(name: str, impl: str, q, segment_ids) -> None:
  key = (name, impl, tuple(q.shape), str(q.dtype), segment_ids is not None, _platform())
  if key not in _LOGGED:
    _LOGGED.add(key)
    _log.info("lightning_attention: impl=%r -> %s for q %s %s on %s%s", impl, name,
              tuple(q.shape), q.dtype, key[-1], " (segment_ids)" if key[-2] else "")


def _resolve_impl(impl: str, inputs: tuple = (), segment_ids=None) -> str:
  """Maps "auto" to a VERIFIED kernel that covers `inputs` on the target platform, else
  `_fallback`'s pure-JAX choice; checks that an explicit name exists and can run on this platform."""
  if impl == "auto":
    platform = _platform()
    for name in AUTO_ORDER:
      entry = TABLE[name]
      if (inputs and entry.status.get(platform) == VERIFIED
          and _kernel_supported(entry, *inputs, segment_ids)):
        return name
    return _fallback(platform, inputs)
  if impl not in TABLE:
    valid = ", ".join(repr(name) for name in ["auto", *sorted(TABLE)])
    raise ValueError(f"lightning_attention: unknown impl={impl!r}; valid values: {valid}.")
  reason = TABLE[impl].blocked.get(_platform())
  if reason is not None:
    raise ValueError(f"lightning_attention: impl={impl!r} cannot run on {_platform()}: "
                     f"{reason}. Use impl='auto' or 'chunked'.")
  return impl


def runs_kernel(impl: str, q, k, v, slope, initial_state=None, block_size=None,
                segment_ids=None) -> bool:
  """Whether `lightning_attention(..., impl=impl)` on these inputs runs a Pallas kernel on the
  target platform ("auto" resolved as the operator resolves it). XLA cannot partition a
  Pallas call, so a caller on a multi-device mesh must put such a call inside a shard_map."""
  return TABLE[_resolve_impl(impl, (q, k, v, slope, initial_state, block_size),
                             segment_ids)].is_kernel


def _is_int(value) -> bool:
  try:
    operator.index(value)
  except TypeError:
    return False
  return not isinstance(value, bool)


def _validate(q, k, v, slope, initial_state, block_size, segment_ids) -> None:
  """Raises ValueError, naming the argument and shapes, for any malformed input."""
  if q.ndim != 4:
    raise ValueError(f"lightning_attention: q must have rank 4 [B,T,H,D]; got shape {q.shape}.")
  if not (q.shape == k.shape == v.shape):
    raise ValueError("lightning_attention: q, k, v must share one [B,T,H,D] shape; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}.")
  if not (q.dtype == k.dtype == v.dtype) or not jnp.issubdtype(q.dtype, jnp.floating):
    raise ValueError("lightning_attention: q, k, v must share one float dtype; got "
                     f"q {q.dtype}, k {k.dtype}, v {v.dtype}.")
  b, _, h, d = q.shape
  if slope.shape != (h,):
    raise ValueError(f"lightning_attention: slope must have shape [H]=({h},) for q of shape "
                     f"{q.shape}; got {slope.shape}.")
  if initial_state is not None and initial_state.shape != (b, h, d, d):
    raise ValueError("lightning_attention: initial_state must have shape "
                     f"[B,H,D,D]={(b, h, d, d)} for q of shape {q.shape}; "
                     f"got {initial_state.shape}.")
  if block_size is not None and (not _is_int(block_size) or block_size < 1):
    raise ValueError(f"lightning_attention: block_size must be a positive int; got {block_size!r}.")
  if segment_ids is not None and (segment_ids.shape != q.shape[:2]
                                  or not jnp.issubdtype(segment_ids.dtype, jnp.integer)):
    raise ValueError(f"lightning_attention: segment_ids must be int [B,T]={q.shape[:2]}; got "
                     f"{segment_ids.dtype}{list(segment_ids.shape)}.")


def lightning_attention(q: Array, k: Array, v: Array, slope: Array, *,
                        initial_state: Optional[Array] = None, impl: str = "auto",
                        block_size: Optional[int] = None,
                        segment_ids: Optional[Array] = None) -> tuple[Array, Array]:
  """Causal linear attention with per-head decay exp(-slope), docs/MODEL.md §6.3.

  o_t = q_t S_t with S_t = exp(-slope) S_{t-1} + k_t^T v_t and S_{-1} = initial_state.
  Differentiable with `jax.grad` in q, k, v, slope and initial_state, and jit-able with `impl` and
  `block_size` static.

  Args:
    q, k, v: [B,T,H,D], one float dtype (float32 or bfloat16).
    slope: [H] float; decay rates (ALiBi slope times the layer factor), ~1e-6 to 20.
    initial_state: [B,H,D,D] float32 state from a previous call, or None for zeros.
    impl: "auto" or a name in `IMPLEMENTATIONS` (module docstring).
    block_size: block length C for "chunked" (default 256) and the kernels (their own
      default when None); T need not be a multiple of it. Ignored by "naive", "recurrent".
    segment_ids: optional [B,T] int ids of packed documents. A document is a maximal run of
      equal ids; the state resets at each document start, so a token attends only within
      its document. initial_state belongs to the first document of each row, and
      final_state is the last document's state. None (default) is one document per row.

  Returns:
    out: [B,T,H,D] in q.dtype.
    final_state: [B,H,D,D] float32, the state after the last token (feed it back as
      initial_state to continue the sequence).
  """
  slope = jnp.asarray(slope)
  segment_ids = None if segment_ids is None else jnp.asarray(segment_ids)
  _validate(q, k, v, slope, initial_state, block_size, segment_ids)
  name = _resolve_impl(impl, (q, k, v, slope, initial_state, block_size), segment_ids)
  _log_choice(name, impl, q, segment_ids)
  slope_H = slope.astype(_F32)
  state_BHDD = None if initial_state is None else jnp.asarray(initial_state).astype(_F32)
  return TABLE[name].run(q, k, v, slope_H, state_BHDD, block_size, segment_ids)
