"""A one-line progress report on stderr (tensors and bytes), for long conversions."""
import sys
import time


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
