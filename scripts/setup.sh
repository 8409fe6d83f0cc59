#!/usr/bin/env bash
# Creates .venv and installs the pinned requirements. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "${1:-}" = "--test" ]; then
  # torch first and pinned, so nothing resolves a CUDA build of it.
  .venv/bin/pip install -q torch==2.13.0
  .venv/bin/pip install -q -r requirements-test.txt
else
  .venv/bin/pip install -q -r requirements.txt
fi
