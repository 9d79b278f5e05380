#!/usr/bin/env bash
# The quickstart study: sweep (IsoFLOP, tiny models, CPU), then collect, fit, plot and report.
# Relaunching skips completed runs and resumes interrupted ones. Extra arguments are Hydra overrides
# of the sweep (the reduced study of the tests uses them); QUICKSTART_DIR moves the sweep directory
# and QUICKSTART_BOOTSTRAP sets the number of bootstrap resamples of the fits.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${QUICKSTART_DIR:-sweeps/quickstart}
SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
    --config-dir experiments/quickstart --config-name study -m "hydra.sweep.dir=$out" "$@"
.venv/bin/scalelab status "$out"
.venv/bin/scalelab analyze report "$out" -o "$out/report" --bootstrap "${QUICKSTART_BOOTSTRAP:-50}" \
    --huber-delta auto --law auto
echo
echo "report: $out/report/report.md (figures beside it)"
