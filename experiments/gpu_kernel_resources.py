"""Registers, stack and spills of GPU kernels compiled deviceless (no GPU, no CUDA toolkit).

Two sources, one per backend (used by experiments/aot_lightning_gpu.py):
  * Pallas-Triton kernels are compiled by XLA. With the debug option
    `xla_gpu_kernel_cache_file` (passed per compile as a compiler option) XLA writes each
    kernel's cubin into that file; `kernel_cache_resources` finds the cubins (ELF) in it and
    reads each kernel's register count and frame (stack) size from the cubin's `.nv.info`
    section, the table `cuobjdump -res-usage` prints (checked against it: REG:255 STACK:344
    for the default forward).
  * Mosaic GPU kernels run ptxas inside the plugin; with MOSAIC_GPU_DUMP_PTXAS=1 it prints
    ptxas's `-v` report to the process's stdout. `captured_output` collects it (file
    descriptor level, since it comes from C++) and `ptxas_reports` parses it.
"""
import contextlib
import os
import re
import struct
import sys
import tempfile

_ELF_MAGIC = b"\x7fELF"
# .nv.info attribute ids (EIATTR_*), format 0x04 = a u16 size then that many bytes.
_EIATTR_FRAME_SIZE = 0x11
_EIATTR_REGCOUNT = 0x2F
_EIFMT_SVAL = 0x04


def _elf_size(blob: bytes) -> int:
  """Bytes of the ELF image at the start of `blob` (its headers end it)."""
  phoff, shoff = struct.unpack_from("<QQ", blob, 0x20)
  phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", blob, 0x36)
  return max(phoff + phentsize * phnum, shoff + shentsize * shnum)


def _sections(elf: bytes) -> dict:
  """name -> (offset, size, link) of each section of a 64-bit little-endian ELF."""
  shoff = struct.unpack_from("<Q", elf, 0x28)[0]
  shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
  headers = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
             for i in range(shnum)]
  names_off = headers[shstrndx][4]

  def name(off):
    start = names_off + off
    return elf[start:elf.index(b"\0", start)].decode()

  return {name(h[0]): (h[4], h[5], h[6]) for h in headers}


def cubin_resources(elf: bytes) -> dict:
  """{kernel name: {"registers": n, "stack_bytes": m}} from a cubin's `.nv.info`."""
  sections = _sections(elf)
  info_off, info_size, _ = sections[".nv.info"]
  symtab_off = sections[".symtab"][0]
  strtab_off = sections[".strtab"][0]

  def symbol_name(index):
    st_name = struct.unpack_from("<I", elf, symtab_off + 24 * index)[0]
    start = strtab_off + st_name
    return elf[start:elf.index(b"\0", start)].decode()

  out: dict = {}
  pos, end = info_off, info_off + info_size
  while pos < end:
    fmt, attr, value = struct.unpack_from("<BBH", elf, pos)
    pos += 4
    if fmt != _EIFMT_SVAL:
      continue  # the u16 was the value itself
    if attr in (_EIATTR_REGCOUNT, _EIATTR_FRAME_SIZE) and value == 8:
      sym, number = struct.unpack_from("<II", elf, pos)
      key = "registers" if attr == _EIATTR_REGCOUNT else "stack_bytes"
      out.setdefault(symbol_name(sym), {})[key] = number
    pos += value
  return out


def kernel_cache_resources(path: str) -> dict:
  """{kernel: resources} of every cubin in an XLA kernel cache file."""
  with open(path, "rb") as f:
    data = f.read()
  out: dict = {}
  start = data.find(_ELF_MAGIC)
  while start >= 0:
    size = _elf_size(data[start:])
    out.update(cubin_resources(data[start:start + size]))
    start = data.find(_ELF_MAGIC, start + size)
  return out


_PTXAS_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def ptxas_reports(text: str) -> list:
  """[{"kernel", "registers", "stack_bytes", "spill_store_bytes", "spill_load_bytes"}] from
  `ptxas -v` output, one per compiled entry function, in order."""
  reports = []
  parts = _PTXAS_ENTRY.split(text)
  for name, body in zip(parts[1::2], parts[2::2]):
    regs, spill = _PTXAS_REGS.search(body), _PTXAS_SPILL.search(body)
    reports.append({"kernel": name, "registers": int(regs.group(1)),
                    "stack_bytes": int(spill.group(1)),
                    "spill_store_bytes": int(spill.group(2)),
                    "spill_load_bytes": int(spill.group(3))})
  return reports


@contextlib.contextmanager
def captured_output():
  """Captures what C++ code writes to stdout and stderr (file descriptors 1 and 2); the
  text is in the yielded list's first item after the block."""
  result: list = []
  sys.stdout.flush()
  sys.stderr.flush()
  saved = (os.dup(1), os.dup(2))
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 1)
    os.dup2(tmp.fileno(), 2)
    try:
      yield result
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])
      tmp.seek(0)
      result.append(tmp.read().decode(errors="replace"))
