#!/usr/bin/env bash
# The quickstart's prediction rung: the law its report chose predicts the compute-optimal runs at a
# budget 10x beyond its largest (1e13 FLOPs), the three sizes nearest the predicted optimum are
# trained with the study's own config (both seeds, packed), and each size's measured mean loss is set
# against its prediction. Run after the quickstart (scripts/quickstart.sh); 6 min 45 s on a 2-core AMD
# EPYC (Zen 5), about twice that on slower cores. QUICKSTART_DIR: the study's sweep directory; RUNG_BUDGET: the budget (default 1e13);
# RUNG_SEEDS: the runs per size the predictions are the mean of (default 2, the study's seeds);
# RUNG_BOOTSTRAP: resamples of each rival form's fit (default 50).
# Extra arguments are Hydra overrides of the rung's sweep.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${QUICKSTART_DIR:-sweeps/quickstart}
rung=${out}-rung  # beside the study, not in it: the study's report collects every run under its directory
.venv/bin/scalelab analyze rung "$out/report" --budget "${RUNG_BUDGET:-1e13}" --config-dir experiments/quickstart \
    --seeds "${RUNG_SEEDS:-2}" --bootstrap "${RUNG_BOOTSTRAP:-50}" -o "$rung"
# shellcheck disable=SC2046  # the overrides file holds one override per word
SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
    --config-dir experiments/quickstart --config-name study -m $(cat "$rung/overrides.txt") "$@"
.venv/bin/scalelab analyze verify "$rung"
