"""Watching jax's interpret-mode race detectors (TPU and Mosaic GPU) from a test.

Both interpreters build one race-detection state object per interpreted kernel launch, from a
class looked up by name in a module of jax._src at launch time (jax 0.11.2):
  * TPU:        jax._src.pallas.mosaic.interpret.interpret_pallas_call.RaceDetectionState
  * Mosaic GPU: jax._src.pallas.mosaic_gpu.interpret.gpu_callbacks.GPURaceDetectionState
Its `reads` / `writes` dicts fill only when `detect_races=True` (every access is checked
against the others), and `races_found` turns True when a check fails. `RaceWatch` swaps that
class for a subclass that keeps every instance, so a test can assert three things: no race,
every interpreted kernel had the detector on, and at least one kernel was checked at all.
These are jax internals: when they move, `RaceWatch` fails naming what it looked for rather
than letting the race checks pass vacuously.
"""
import dataclasses
import types

import pytest

# Fields of RaceDetectionState this watch reads.
_FIELDS = ("races_found", "reads", "writes")


class RaceWatch:
  """Every race-detection state the interpreter creates while the watch is installed."""

  def __init__(self, monkeypatch: pytest.MonkeyPatch, module: types.ModuleType,
               class_name: str):
    where = f"{module.__name__}.{class_name}"
    base = getattr(module, class_name, None)
    assert isinstance(base, type), (
        f"{where} is missing (jax {_jax_version()}): the interpreter's race-detection state "
        "moved, so these tests cannot see races; update tests/pallas_kernels/race_detection.py")
    fields = {f.name for f in dataclasses.fields(base)} if dataclasses.is_dataclass(base) else set()
    missing = [f for f in _FIELDS if f not in fields]
    assert not missing, (
        f"{where} has no field(s) {missing} (jax {_jax_version()}); update "
        "tests/pallas_kernels/race_detection.py")
    self.where = where
    self.states = []
    self.launches = 0  # states ever recorded, `take`n ones included
    watch = self

    class Recording(base):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        watch.states.append(self)
        watch.launches += 1

    monkeypatch.setattr(module, class_name, Recording)

  def take(self) -> list:
    """Removes and returns the states recorded so far, so that `check` leaves them to the
    caller (a test that expects a race)."""
    taken = list(self.states)
    self.states.clear()
    return taken

  def check(self, *, expect_kernel: bool):
    """No races; the detector on in every interpreted kernel; with `expect_kernel`, at least
    one kernel checked."""
    raced = sum(s.races_found for s in self.states)
    assert not raced, (f"interpret mode detected a data race in {raced} of "
                       f"{len(self.states)} kernel launches (RACE DETECTED is printed above)")
    unchecked = [s for s in self.states if not checked_accesses(s)]
    assert not unchecked, (
        f"{len(unchecked)} of {len(self.states)} interpreted kernel launches recorded no "
        f"memory access in {self.where}: they ran with detect_races=False")
    if expect_kernel:
      assert self.launches, (
          f"no kernel was interpreted with race detection in this test: {self.where} was never "
          "instantiated (the kernel did not run in interpret mode, or jax no longer builds its "
          "race-detection state from that name). Mark tests that run no kernel with "
          "@pytest.mark.no_kernel.")


def checked_accesses(state) -> int:
  """How many reads and writes the detector checked in one kernel launch."""
  return (sum(len(v) for v in state.reads.values())
          + sum(len(v) for v in state.writes.values()))


def _jax_version() -> str:
  import jax
  return jax.__version__
