#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then runs every test on CPU, the end-to-end tier included
# (CI runs exactly this). Extra arguments go to pytest, after ours: `-m "not e2e"` skips that tier, as
# a bare `pytest` does (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -m "e2e or not e2e" "$@"
