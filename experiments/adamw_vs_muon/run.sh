#!/usr/bin/env bash
# AdamW against Muon: one IsoFLOP sweep per optimizer (packed launcher), then the report that fits
# both and compares Muon with AdamW (its compute multiplier). Relaunching skips completed runs and
# resumes interrupted ones. Extra arguments are Hydra overrides of both sweeps (a reduced study:
# "hydra.sweeper.budgets=[3.3e10,1e11,3e11]"); STUDY_DIR moves the sweep directories and
# STUDY_BOOTSTRAP sets the number of bootstrap resamples of the fits.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${STUDY_DIR:-sweeps/adamw_vs_muon}
for optimizer in adamw muon; do
  SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
      --config-dir experiments/adamw_vs_muon --config-name study -m "optimizer=$optimizer" \
      "hydra.sweep.dir=$out/$optimizer" "$@"
  .venv/bin/scalelab status "$out/$optimizer"
done
# the first input is the baseline: the report's comparison is Muon's over AdamW
.venv/bin/scalelab analyze report "$out/adamw" "$out/muon" -o "$out/report" \
    --bootstrap "${STUDY_BOOTSTRAP:-50}" --huber-delta auto
echo
echo "report: $out/report/report.md (figures beside it)"
