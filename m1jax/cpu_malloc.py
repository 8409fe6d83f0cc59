"""glibc malloc settings that keep XLA:CPU's buffers resident between steps.

Why: XLA:CPU allocates every temporary of an executable with malloc on each call and frees
it at the end. Under glibc's defaults the large ones (above the 128 KiB..32 MiB dynamic mmap
threshold, or too big for a thread arena's 64 MiB heap) come from a fresh mmap, so every
step faults in and zeroes its whole working set again: ~580k page faults (2.3 GB) per
forward+backward of the 8-layer benchmark model at T 4096, ~1 s of kernel time in a 2.8 s
step. Worse, after another framework's step in the same process (transformers' backward in
experiments.bench_peer_cpu) the next XLA step spent 2.5-4.5 s in the kernel zeroing pages
(4.3-5.1 s instead of 2.8 s). Measured in WORKSPACE_NOTES "Issue 16", session 4.

The settings, all read by glibc at process start (hence the re-exec):
  MALLOC_ARENA_MAX=1            one arena, so no allocation falls back to mmap because a
                                thread arena's heap is capped at 64 MiB;
  MALLOC_MMAP_MAX_=0            never serve an allocation with its own mmap;
  MALLOC_TRIM_THRESHOLD_=10^11  never give the heap's top back to the kernel;
  MALLOC_TOP_PAD_=1 GiB         grow the heap in 1 GiB steps (without it, one step in ~5 grew
                                the heap page by page and took 6 s instead of 2.4 s).
The price is memory that stays mapped after a peak (the process's high-water mark), which is
what a long-running training or benchmark process wants. Other allocators (tcmalloc, as
TPU VM images preload) achieve the same; these need nothing installed.
"""
import os
import sys

SETTINGS = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(10**11),
    "MALLOC_TOP_PAD_": str(1 << 30),
}


def active() -> bool:
  """Whether this process started with every setting in SETTINGS."""
  return all(os.environ.get(k) == v for k, v in SETTINGS.items())


def reexec_with_settings() -> None:
  """Replace this process by the same command line with SETTINGS in its environment (a
  no-op when they are already there). Call it before any work whose state would be lost:
  absl flags are parsed again from the same argv."""
  if active():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, **SETTINGS})
