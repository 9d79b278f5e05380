#!/usr/bin/env bash
# The study's learning-rate check for Muon (README.md, "Muon's learning rate"): at the budget 1e11,
# a small (d16, 165 tokens per parameter) and a large (d48, 3.7) size of the family, Muon with the
# AdamW law's lr and the matrices' update RMS optimizer.muon_rms at 0.1, 0.2, 0.4, 0.8 (0.2: the
# same step size as AdamW's), beside AdamW itself. Extra arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${LR_CHECK_DIR:-sweeps/adamw_vs_muon/lr_check}
run() {
  SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
      --config-dir experiments/adamw_vs_muon --config-name study -m hydra.sweeper.budgets=[1e11] \
      hydra.sweeper.models=[d16,d48] "$@"
}
run optimizer=muon optimizer.muon_rms=0.1,0.2,0.4,0.8 "hydra.sweep.dir=$out/muon"
run optimizer=adamw "hydra.sweep.dir=$out/adamw"
for d in "$out"/muon "$out"/adamw; do .venv/bin/scalelab status "$d"; done
