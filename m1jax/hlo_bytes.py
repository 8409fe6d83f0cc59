"""Collective traffic read from compiled HLO text (the per-device SPMD program), for the
benchmarks and tests that set it against an analytic count."""
import math
import re

DTYPE_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1,
               "pred": 1}
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def result_bytes(result_type: str) -> int:
  """Bytes of an instruction's result type text, e.g. "(f32[32,64]{1,0}, f32[32,64]{1,0})"."""
  return sum(math.prod(int(d) for d in dims.split(",") if d) * DTYPE_BYTES[dtype]
             for dtype, dims in _SHAPE.findall(result_type))


def all_to_all_bytes(hlo: str, exchange_only: bool = False) -> tuple[int, int]:
  """(number of all-to-all instructions, their result bytes summed) in a compiled module;
  `exchange_only`: only those traced from jax.lax.all_to_all (the MoE exchange), not the
  ones the SPMD partitioner inserts to reshard."""
  count = total = 0
  for line in hlo.splitlines():
    if " all-to-all(" not in line:
      continue
    if exchange_only and '/all_to_all"' not in line:
      continue
    count += 1
    total += result_bytes(line.split(" all-to-all(")[0].partition("=")[2])
  return count, total
