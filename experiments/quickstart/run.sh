#!/usr/bin/env bash
# The quickstart study: sweep (IsoFLOP, tiny models, CPU), then collect, fit, plot and report.
# Relaunching skips completed runs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train --config-dir experiments/quickstart --config-name study -m "$@"
.venv/bin/scalelab status sweeps/quickstart
.venv/bin/scalelab analyze report sweeps/quickstart -o sweeps/quickstart/report --bootstrap 50
echo
echo "report: sweeps/quickstart/report/report.md (figures beside it)"
