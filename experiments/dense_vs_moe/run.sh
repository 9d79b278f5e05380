#!/usr/bin/env bash
# Dense against mixture-of-experts: one IsoFLOP sweep of the dense family and one per MoE variant
# (4 and 8 experts, top-1; packed launcher), then the report that fits all three and gives each MoE
# variant's compute multiplier over dense. Relaunching skips completed runs and resumes interrupted
# ones. Extra arguments are Hydra overrides of every sweep (a reduced study:
# "hydra.sweeper.budgets=[3.3e10,7.5e10,1.7e11]"); STUDY_DIR moves the sweep directories and
# STUDY_BOOTSTRAP sets the number of bootstrap resamples of the fits.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${STUDY_DIR:-sweeps/dense_vs_moe}
for experts in 0 4 8; do
  name=$([ "$experts" = 0 ] && echo dense || echo "moe-e$experts")
  SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
      --config-dir experiments/dense_vs_moe --config-name study -m "model.moe.experts=$experts" \
      "hydra.sweep.dir=$out/$name" "$@"
  .venv/bin/scalelab status "$out/$name"
done
# the first input is the baseline: the report's comparisons are each MoE variant's over dense
.venv/bin/scalelab analyze report "$out/dense" "$out/moe-e4" "$out/moe-e8" -o "$out/report" \
    --bootstrap "${STUDY_BOOTSTRAP:-50}" --huber-delta auto --law auto
echo
echo "report: $out/report/report.md (figures beside it)"
