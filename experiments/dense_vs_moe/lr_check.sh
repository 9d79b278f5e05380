#!/usr/bin/env bash
# The study's learning-rate check (README.md, "Learning rates"): the dense law's lr transferred to
# the MoE shapes, checked at 0.5x and 2x for the 8-expert family at the budget 1.7e11, at the two
# sizes that bracket its best (d24, d32), both seeds. The 1x runs are the study's own. Extra
# arguments are Hydra overrides.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${LR_CHECK_DIR:-sweeps/dense_vs_moe/lr_check}
SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
    --config-dir experiments/dense_vs_moe --config-name study -m model.moe.experts=8 \
    hydra.sweeper.budgets=[1.7e11] hydra.sweeper.models=[d24,d32] optimizer.lr_scale=0.5,2 \
    "hydra.sweep.dir=$out" "$@"
.venv/bin/scalelab status "$out"
