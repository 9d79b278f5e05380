#!/usr/bin/env bash
# The benchmark: training-step tokens/s and MFU against this machine's measured matmul peak, the data
# pipeline's throughput, logging/checkpoint overhead and compile time (cold and warm cache), from one
# process. Arguments go to `scalelab bench` (e.g. --shapes reference,p1m --precision bf16 --json out.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/scalelab bench "$@"
