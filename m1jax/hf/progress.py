"""A one-line progress report on stderr (tensors and bytes), for long conversions, and
returning freed memory to the OS between their steps."""
import ctypes
import ctypes.util
import sys
import time

try:
  _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  _MALLOC_TRIM = _LIBC.malloc_trim
except (OSError, AttributeError):  # not glibc
  _MALLOC_TRIM = None


def release_free_memory() -> None:
  """Gives freed heap memory back to the OS (glibc's malloc_trim).

  TensorStore's chunk buffers come from glibc arenas that keep freed memory; over a long
  conversion that left RSS hundreds of MB above what was live. Called between params so the
  peak is what one step needs, not what earlier steps left behind.
  """
  if _MALLOC_TRIM is not None:
    _MALLOC_TRIM(0)


class Progress:
  """`advance(tensors, nbytes)` after each unit of work; `close()` ends the line.

  Redraws at most twice a second so a 8,000-tensor conversion does not flood a log file.
  """

  def __init__(self, label: str, total_tensors: int, total_bytes: int, enabled: bool = True,
               stream=None):
    self.label, self.total_tensors, self.total_bytes = label, total_tensors, total_bytes
    self.enabled, self.stream = enabled, stream or sys.stderr
    self.tensors = self.nbytes = self.skipped_bytes = 0
    self._drawn = -1  # the tensor count last drawn
    self.start = self._last = time.perf_counter()

  def advance(self, tensors: int, nbytes: int, skipped: bool = False) -> None:
    self.tensors += tensors
    self.nbytes += nbytes
    if skipped:  # resumed work does not count towards the rate
      self.skipped_bytes += nbytes
    now = time.perf_counter()
    if now - self._last >= 0.5 or self.tensors == self.total_tensors:
      self._last = now
      self._draw(now)

  def _draw(self, now: float) -> None:
    if not self.enabled:
      return
    self._drawn = self.tensors
    elapsed = max(now - self.start, 1e-9)
    rate = (self.nbytes - self.skipped_bytes) / elapsed
    left = self.total_bytes - self.nbytes
    eta = f", ETA {left / rate:.0f} s" if rate > 0 and left > 0 else ""
    self.stream.write(f"\r{self.label}: {self.tensors}/{self.total_tensors} tensors, "
                      f"{self.nbytes / 1e9:.2f}/{self.total_bytes / 1e9:.2f} GB, "
                      f"{rate / 1e6:.0f} MB/s{eta}   ")
    self.stream.flush()

  def close(self) -> None:
    if self.enabled:
      if self._drawn != self.tensors:
        self._draw(time.perf_counter())
      self.stream.write("\n")
      self.stream.flush()
