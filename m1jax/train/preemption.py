"""The checkpoint/SIGTERM tail of a training loop, shared by the SFT trainer
(m1jax/train/loop.py) and the RL loop (m1jax/rl/loop.py).

    with CheckpointTail(save, every=100, last_step=n, close=(ckpt.close, writer.close)) as tail:
      while step < n:
        ...one step...
        if tail.after_step(step):
          break
    tail.preempted, tail.last_saved

SIGTERM (a preemption notice) becomes a flag polled at the end of each step, so the step in
flight finishes, is saved, and the loop exits cleanly; the previous handler comes back on
exit. Only the main thread may install signal handlers: elsewhere the flag never rises.
"""
import signal
import threading
from typing import Callable, Optional, Sequence


class CheckpointTail:
  """Saves on the `every` schedule, at `last_step` and on SIGTERM; stops after a SIGTERM
  save. `close` callables run in order on exit (also after an exception), each even if an
  earlier one raised."""

  def __init__(self, save: Callable[[int], None], *, every: int, last_step: int,
               close: Sequence[Callable[[], None]] = (), last_saved: Optional[int] = None,
               what: str = "step"):
    self._save, self._every, self._last_step = save, every, last_step
    self._close, self._what = tuple(close), what
    self.last_saved = last_saved
    self.requested = False
    self.preempted = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def after_step(self, step: int) -> bool:
    """Call once `step` updates are done; True means stop (saved after a SIGTERM)."""
    if step % self._every == 0 or step == self._last_step or self.requested:
      self._save(step)
      self.last_saved = step
    if self.requested:
      print(f"SIGTERM: saved {self._what} {step}; exiting.", flush=True)
      self.preempted = True
    return self.preempted

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    _run_all(self._close)


def _run_all(fns) -> None:
  if fns:
    try:
      fns[0]()
    finally:
      _run_all(fns[1:])
