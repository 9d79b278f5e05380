#!/usr/bin/env bash
# µP learning-rate transfer: 3 widths (16, 32, 64) x 2 parametrizations x 8 learning rates (48 runs,
# packed: the runs of one width and parametrization train as one program), then each cell's optimum
# and, per parametrization, the fitted lr* = c * N^p (p near 0: the best lr does not move with width).
# Relaunching skips completed runs. MUP_DIR moves the sweep directory; extra arguments are Hydra
# overrides of the sweep (fewer tokens for a quick look: data.tokens=262144).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${MUP_DIR:-sweeps/mup_transfer}
SCALELAB_HOST_DEVICES=${SCALELAB_HOST_DEVICES:-$(nproc)} .venv/bin/scalelab-train \
    --config-dir experiments/mup_transfer --config-name study -m "hydra.sweep.dir=$out" "$@"
.venv/bin/scalelab analyze collect "$out" --best-over optimizer.lr -o "$out/runs.csv"
.venv/bin/python - "$out" <<'PY'
import sys
import pandas as pd
out = sys.argv[1]
t = pd.read_csv(f"{out}/runs.csv")
t = t[t["status"] == "completed"]
print(t.pivot_table(index=["model.parametrization", "params"], columns="lr", values="loss")
      .to_string(float_format=lambda v: f"{v:.3f}"))
best = t[t["is_best"]].set_index(["model.parametrization", "model"]).sort_values("params")
print(best[["params", "lr", "loss", "lr_opt", "lr_bracketed"]].to_string())
for name, part in t.groupby("model.parametrization"):
    part.drop(columns=["model.parametrization"]).to_csv(f"{out}/runs-{name}.csv", index=False)
PY
for p in standard mup; do
  echo; echo "== $p: lr* against N"
  .venv/bin/scalelab analyze lr-law "$out/runs-$p.csv" --over N -o "$out/lr-law-$p"
done
