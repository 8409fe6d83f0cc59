"""CheckpointTail (m1jax/train/preemption.py), the checkpoint/SIGTERM tail shared by the SFT
and RL loops, in-process: the save schedule, SIGTERM saving the step in flight and stopping,
the previous handler restored, and every closer run even after an exception. The loops'
own resume and real-process SIGTERM tests are tests/train/test_train.py,
tests/train/test_preemption.py and tests/rl/test_loop.py."""
import os
import signal

import pytest

from m1jax.train.preemption import CheckpointTail


def _run(num_steps, every, sigterm_at=None, last_saved=None):
  saved, closed = [], []
  tail = CheckpointTail(saved.append, every=every, last_step=num_steps, last_saved=last_saved,
                        close=(lambda: closed.append("ckpt"), lambda: closed.append("writer")))
  step = 0
  with tail:
    while step < num_steps:
      step += 1
      if step == sigterm_at:
        os.kill(os.getpid(), signal.SIGTERM)
      if tail.after_step(step):
        break
  return step, saved, closed, tail


def test_saves_on_schedule_and_at_the_last_step():
  step, saved, closed, tail = _run(7, every=3, last_saved=None)
  assert (step, saved, closed) == (7, [3, 6, 7], ["ckpt", "writer"])
  assert (tail.last_saved, tail.preempted) == (7, False)


def test_sigterm_saves_the_step_in_flight_then_stops_and_restores_the_handler(capsys):
  before = signal.getsignal(signal.SIGTERM)
  step, saved, closed, tail = _run(10, every=4, sigterm_at=5, last_saved=2)
  assert (step, saved, tail.last_saved, tail.preempted) == (5, [4, 5], 5, True)
  assert "SIGTERM: saved step 5; exiting." in capsys.readouterr().out
  assert signal.getsignal(signal.SIGTERM) is before
  assert closed == ["ckpt", "writer"]
  # No steps run: the checkpoint it resumed from stays the last one saved.
  assert _run(0, every=4, last_saved=2)[3].last_saved == 2


def test_every_closer_runs_after_an_exception():
  closed = []

  def fail_close():
    closed.append("ckpt")
    raise OSError("disk full")

  # As with try/finally: the closer's error surfaces, chained to the loop's.
  with pytest.raises(OSError) as info:
    with CheckpointTail(lambda s: None, every=1, last_step=3,
                        close=(fail_close, lambda: closed.append("writer"))):
      raise FloatingPointError("nan")
  assert isinstance(info.value.__context__, FloatingPointError)
  assert closed == ["ckpt", "writer"]
