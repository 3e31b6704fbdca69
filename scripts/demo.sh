#!/usr/bin/env bash
# The main job: sets up .venv if needed, then runs the offline demo on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for stage in teacher pretrain finetune; do
  .venv/bin/python -m tagi fit --config "configs/demo/$stage.yaml" "$@"
done
