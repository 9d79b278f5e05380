#!/usr/bin/env bash
# The main job: set up the environment (the package alone, no dev tools), then run the quickstart
# scaling study on the built-in corpus (IsoFLOP sweep of tiny models on the CPU -> fits -> figures
# -> sweeps/quickstart/report/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash experiments/quickstart/run.sh "$@"
