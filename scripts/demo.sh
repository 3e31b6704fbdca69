#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs the offline demo pipeline on CPU
# (θ0 → teachers → pretrain → finetune → held-out test), and publishes its table to docs/results/demo.json
# (regenerate the README's table with `.venv/bin/python -m tagi.eval.results --write`). Extra arguments go to
# the pipeline (e.g. --force true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m tagi pipeline --config configs/demo/pipeline.yaml --publish=true "$@"
