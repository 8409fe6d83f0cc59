"""What is live at the peak of a compiled program's temporaries, read from an XLA dump.

  python -m experiments.xla_buffer_peak --dump=DIR [--module=jit_train_step] [--top=25]

DIR is an `xla_dump_to` directory. For a TPU AOT compile the dump options must go through the
compile call (libtpu refuses them in LIBTPU_INIT_ARGS), e.g.
`lowered.compile(compiler_options={"xla_dump_to": DIR, "xla_dump_hlo_as_text": True})`.
memory_analysis() gives totals only; this reads `*after_optimizations-buffer-assignment.txt`
(every value of the preallocated temp allocation, with its size) and
`*after_optimizations-live-range.txt` (each value's live interval in the flattened schedule),
sums the live temp values at each schedule step and prints the peak step and the live values
there grouped by shape, largest first.
"""
import collections
import glob
import re

from absl import app
from absl import flags

_DUMP = flags.DEFINE_string("dump", None, "xla_dump_to directory", required=True)
_MODULE = flags.DEFINE_string("module", "jit_train_step", "substring of the module's file name")
_TOP = flags.DEFINE_integer("top", 25, "shapes to print")

_VALUE = re.compile(r" value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\S+)")
_RANGE = re.compile(r"    (\S+):(\d+)-(\d+)$")
_STEP = re.compile(r"    (\d+):(\S+)$")


def _one(dump: str, module: str, suffix: str) -> str:
  paths = glob.glob(f"{dump}/*{module}*{suffix}")
  if len(paths) != 1:
    raise ValueError(f"--dump={dump} --module={module}: expected one *{suffix}, found "
                     f"{len(paths)}: {paths}")
  return paths[0]


def temp_values(buffer_assignment: str) -> list[tuple[str, int, str]]:
  """(value name with its tuple index, bytes, shape) of the main preallocated temp heap
  (allocations in another memory space carry a `color` and are left out)."""
  values, inside = [], False
  with open(buffer_assignment) as f:
    for line in f:
      if line.startswith("allocation"):
        inside = "preallocated-temp" in line and "color" not in line
      elif inside and (m := _VALUE.match(line)):
        name = m.group(1) if "{" in m.group(1) else m.group(1) + "{}"
        values.append((name, int(m.group(2)), m.group(3).split("{")[0]))
  return values


def live_ranges(live_range: str) -> tuple[dict, dict]:
  """({value: (first step, last step)}, {step: instruction})."""
  ranges, steps = {}, {}
  with open(live_range) as f:
    for line in f:
      if m := _RANGE.match(line):
        ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
      elif m := _STEP.match(line):
        steps[int(m.group(1))] = m.group(2)
  return ranges, steps


def peak(values, ranges) -> tuple[int, int, list]:
  """(peak step, live bytes there, [(bytes, name, shape)] live there, largest first)."""
  missing = [v[0] for v in values if v[0] not in ranges]
  if missing:
    raise ValueError(f"{len(missing)} temp values have no live range, e.g. {missing[:3]}")
  delta = collections.Counter()
  for name, size, _ in values:
    start, end = ranges[name]
    delta[start] += size
    delta[end + 1] -= size
  live, best, best_step = 0, -1, 0
  for step in sorted(delta):
    live += delta[step]
    if live > best:
      best, best_step = live, step
  rows = sorted(((size, name, shape) for name, size, shape in values
                 if ranges[name][0] <= best_step <= ranges[name][1]), reverse=True)
  return best_step, best, rows


def main(argv):
  del argv
  values = temp_values(_one(_DUMP.value, _MODULE.value,
                            "after_optimizations-buffer-assignment.txt"))
  ranges, steps = live_ranges(_one(_DUMP.value, _MODULE.value,
                                   "after_optimizations-live-range.txt"))
  step, live, rows = peak(values, ranges)
  gib = 1 << 30
  print(f"{len(values)} temp values; peak {live / gib:.2f} GiB live at step {step} "
        f"({steps.get(step)})")
  by_shape = collections.defaultdict(list)
  for size, name, shape in rows:
    by_shape[shape].append((size, name))
  for shape, items in sorted(by_shape.items(), key=lambda kv: -sum(s for s, _ in kv[1]))[
      :_TOP.value]:
    print(f"  {sum(s for s, _ in items) / gib:8.3f} GiB  {len(items):3d} x {shape}  "
          f"e.g. {items[0][1]}")


if __name__ == "__main__":
  app.run(main)
