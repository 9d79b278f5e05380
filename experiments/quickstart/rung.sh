#!/usr/bin/env bash
# The quickstart's prediction rung: the law its report chose predicts the compute-optimal runs at a
# budget 10x beyond its largest (1e13 FLOPs); the three sizes nearest the predicted optimum are
# trained with the study's own config (both seeds, packed), the predicted best size also at 0.5x and 2x
# its learning rate (one seed), each size's measured mean loss is set against its prediction
# (`analyze verify`), and the study's report is written again with the rung's section and figure.
# Run after the quickstart (scripts/quickstart.sh). README.md gives its wall time and result.
# QUICKSTART_DIR: the study's sweep directory; RUNG_BUDGET: the budget (default 1e13);
# RUNG_SEEDS: the runs per size the predictions are the mean of (default 2, the study's seeds);
# RUNG_BOOTSTRAP: resamples of each rival form's fit (default 50).
# Extra arguments are Hydra overrides of the rung's sweeps.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${QUICKSTART_DIR:-sweeps/quickstart}
rung=${out}-rung  # beside the study, not in it: the study's report collects every run under its directory
bootstrap=${QUICKSTART_BOOTSTRAP:-50}
.venv/bin/scalelab analyze rung "$out/report" --budget "${RUNG_BUDGET:-1e13}" --config-dir experiments/quickstart \
    --seeds "${RUNG_SEEDS:-2}" --bootstrap "${RUNG_BOOTSTRAP:-50}" -o "$rung"
export SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)}
for overrides in overrides.txt lr_check.txt; do
    # shellcheck disable=SC2046  # the overrides file holds one override per word
    .venv/bin/scalelab-train --config-dir experiments/quickstart --config-name study -m $(cat "$rung/$overrides") "$@"
done
.venv/bin/scalelab analyze verify "$rung" --bootstrap "$bootstrap"
.venv/bin/scalelab analyze report "$out" -o "$out/report" --bootstrap "$bootstrap" --huber-delta auto --law auto \
    --rung "$rung" > /dev/null
echo
echo "report with the rung: $out/report/report.md (section 'Prediction rung', figure rung.png)"
