#!/usr/bin/env bash
# How experiments/quickstart/lr_law.json was made: learning-rate sweeps (factor-2 grids, packed) in
# IsoFLOP cells of the study's shape family, then `scalelab analyze lr-law`. Not part of the main job
# (about 25 minutes on 2 cores); rerunning skips the runs already done.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${CALIBRATE_DIR:-sweeps/quickstart-lr}
sweep() {
    SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
        --config-dir experiments/quickstart --config-name calibrate -m "hydra.sweep.dir=$out" "$@"
}
sweep 'hydra.sweeper.budgets=[3e10,3e11]' 'hydra.sweeper.models=[d16,d24,d32,d48,d64]' \
    'hydra.sweeper.tokens_per_param=[3,600]' optimizer.lr=0.0035,0.007,0.014,0.028,0.056
sweep 'hydra.sweeper.budgets=[3e11]' 'hydra.sweeper.models=[d32,d48,d64]' \
    'hydra.sweeper.tokens_per_param=[3,600]' optimizer.lr=0.00088,0.00175
sweep 'hydra.sweeper.budgets=[3e10]' 'hydra.sweeper.models=[d24,d32]' \
    'hydra.sweeper.tokens_per_param=[3,600]' optimizer.lr=0.00088,0.00175
sweep 'hydra.sweeper.budgets=[3.3e10,1e11]' 'hydra.sweeper.models=[d8,d12]' \
    'hydra.sweeper.tokens_per_param=[3,600]' optimizer.lr=0.0035,0.007,0.014,0.028
sweep 'hydra.sweeper.budgets=[1e12]' 'hydra.sweeper.models=[d48,d64,d96]' \
    'hydra.sweeper.tokens_per_param=[1,600]' optimizer.lr=0.0009,0.0018,0.0035,0.007
.venv/bin/scalelab analyze collect "$out" --best-over optimizer.lr -o "$out/runs.csv"
.venv/bin/scalelab analyze lr-law "$out/runs.csv" -o "$out/law" --allow-edge
cp "$out/law/lr_law.json" experiments/quickstart/lr_law.json
echo "law: experiments/quickstart/lr_law.json (figures: $out/law/)"
