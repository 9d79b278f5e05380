#!/usr/bin/env bash
# The test command: set up the environment with the dev extra (pytest, ruff, transformers) if needed,
# then lint (ruff) and run the whole suite (slow tests included).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export XLA_FLAGS="${XLA_FLAGS:---xla_force_host_platform_device_count=8}"
.venv/bin/ruff check scalelab tests hydra_plugins
exec .venv/bin/python -m pytest "$@"
