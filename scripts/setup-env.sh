#!/usr/bin/env bash
# Create .venv and install the pinned dependencies when they are missing or the pins changed.
# torch goes first and pinned: an unpinned torch pulled in by another package would fetch GBs of
# CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
want=$(cat constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
echo "[setup-env] creating .venv and installing pinned dependencies (first run only)" >&2
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
echo "$want" > "$stamp"
