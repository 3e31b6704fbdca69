#!/usr/bin/env bash
# The GPU acceptance run: benchmarks/rehearsal.py on CUDA — every configs/sni-t5-base/ stage at t5-base's
# shape with the config's own DeepSpeed ZeRO-2 strategy and bf16 on the visible GPUs, then tagi test and
# tagi adapter — printing one JSON (step times, memory, each hand-off's pass/fail). Under 10 minutes on
# one H100. Without CUDA it says so in one line and exits 2. Extra arguments go to the rehearsal
# (e.g. --steps 5, --shared DIR). The CPU rehearsal is the same code: `python benchmarks/rehearsal.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export TOKENIZERS_PARALLELISM=false
if ! .venv/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)"; then
  echo "gpu-check: no CUDA device on this machine (the CPU rehearsal is: python benchmarks/rehearsal.py)" >&2
  exit 2
fi
exec .venv/bin/python benchmarks/rehearsal.py --device cuda "$@"
