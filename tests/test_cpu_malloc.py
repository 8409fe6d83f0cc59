"""m1jax.cpu_malloc: the re-exec puts exactly its glibc settings into the new process, keeps
the command line, and happens once."""
import json
import os
import subprocess
import sys

from m1jax import cpu_malloc

# Prints "start" before the re-exec: a process that re-executed prints it twice.
_CHILD = """
import json, os, sys
from m1jax import cpu_malloc
print("start", flush=True)
cpu_malloc.reexec_with_settings()
print(json.dumps({"active": cpu_malloc.active(), "argv": sys.argv[1:],
                  "env": {k: os.environ.get(k) for k in cpu_malloc.SETTINGS}}))
"""


def _run(env):
  out = subprocess.run([sys.executable, "-c", _CHILD, "--flag=1", "x"], env=env, check=True,
                       capture_output=True, text=True, timeout=120).stdout.strip().splitlines()
  return out.count("start"), json.loads(out[-1])


def test_reexec_sets_the_settings_and_keeps_the_command_line():
  env = {k: v for k, v in os.environ.items() if k not in cpu_malloc.SETTINGS}
  env["MALLOC_ARENA_MAX"] = "4"  # a different value is replaced, not kept
  starts, child = _run(env)
  assert starts == 2
  assert child["active"]
  assert child["env"] == cpu_malloc.SETTINGS
  assert child["argv"] == ["--flag=1", "x"]


def test_reexec_is_a_no_op_when_already_active():
  starts, child = _run({**os.environ, **cpu_malloc.SETTINGS})
  assert starts == 1
  assert child["active"] and child["env"] == cpu_malloc.SETTINGS
