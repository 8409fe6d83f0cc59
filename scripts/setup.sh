#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs the pinned requirements (and m1jax itself,
# editable). Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.12 is what the GPU machine runs (with jax 0.11.2). A pyenv shim can exist without
# its version being selected, so every candidate is executed, not just looked up.
find_python312() {
  local candidates=(python3.12)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.12*/bin/python3.12)
  fi
  candidates+=(/usr/bin/python3.12 /usr/local/bin/python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12)
  local py
  for py in "${candidates[@]}"; do
    if "$py" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ]; then
  if ! PYTHON=$(find_python312); then
    echo "error: Python 3.12 not found (m1jax pins jax 0.11.2, the GPU machine's version, on" >&2
    echo "       Python 3.12). Install it, e.g. 'pyenv install 3.12' or 'apt install python3.12" >&2
    echo "       python3.12-venv', so that 'python3.12 --version' works, then rerun." >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "error: .venv is not Python 3.12 ($(.venv/bin/python --version 2>&1)); delete .venv and rerun." >&2
  exit 1
fi
if [ "${1:-}" = "--test" ]; then
  # torch first and pinned, so nothing resolves another build of it.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -r requirements-test.txt
else
  .venv/bin/pip install -q -r requirements.txt
fi
# Installed editable, so `import m1jax` works from any directory (pods start from anywhere).
.venv/bin/pip install -q --no-deps -e .
