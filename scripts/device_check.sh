#!/usr/bin/env bash
# The device check: one prepared script for a session that is lent an accelerator (about 8 minutes
# on one H100). Stages, each writing under $OUT (default device_check_out/):
#   1. bench      the GPU bench: gpu-125m and the reference shape in bf16, tokens/s and MFU
#   2. attention  cuDNN flash attention against XLA's, 20 steps of one run each: max relative
#                 difference of the train losses (tolerance ATTN_TOL, default 0.02: bf16 kernels
#                 sum in different orders)
#   3. packed     16 runs of a ~10M-parameter model packed as one program against the same 16 one
#                 after another in one process: wall-time ratio and effective MFU
#   4. resume     a run killed (as by kill -9) at step 35 and relaunched against the uninterrupted
#                 run: losses bitwise equal, each step logged once
#   5. isoflop    a two-budget packed IsoFLOP sweep and its report
# then one summary table. `--dry-run` prints every stage's commands and checks each training
# command's config (Hydra's --cfg job; the sweep's plan with hydra.sweeper.dry_run) without
# training; the test
# suite runs it so that the script cannot rot.
#   bash scripts/device_check.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-device_check_out}
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
ATTN_TOL=${ATTN_TOL:-0.02}
mkdir -p "$OUT"
if [[ $DRY == 0 && ! -x "$PY" ]]; then bash scripts/setup.sh cuda; fi

stage() { echo; echo "== $1"; }
run() {  # print a command; run it (or, dry, check a training command's config)
    echo "+ $*"
    if [[ $DRY == 1 ]]; then
        if [[ "$1" == *scalelab-train && "$2" == -m ]]; then "$@" hydra.sweeper.dry_run=true > /dev/null
        elif [[ "$1" == *scalelab-train ]]; then "$@" --cfg job > /dev/null; fi
        return 0
    fi
    "$@"
}
steps_of() { echo $(( $1 * $2 * $3 )); }  # tokens of STEPS steps at SEQ x BATCH

stage "1. bench (bf16)"
run "$BIN/scalelab" bench --shapes gpu-125m,reference --precision bf16 --steps 20 --no-extras --json "$OUT/bench.json"

stage "2. cuDNN attention against XLA attention"
ATTN=(model=p30m data.seq_len=1024 train.batch_size=8 "data.tokens=$(steps_of 20 1024 8)" train.precision=bf16
      train.log_every=1 train.eval_tokens=8192 train.progress=false)
for kind in cudnn xla; do
    run "$BIN/scalelab-train" "${ATTN[@]}" "model.attention=$kind" "hydra.run.dir=$OUT/attention-$kind"
done

stage "3. 16 packed runs against the same 16 one after another"
run "$BIN/scalelab" bench --sweep p10m --sweep-steps 200 --sweep-runs 16 --sweep-ways packed,in-process \
    --precision bf16 --json "$OUT/packed.json"

stage "4. kill -9 at step 35 and resume"
RESUME=(model=p10m data.seq_len=256 train.batch_size=16 "data.tokens=$(steps_of 60 256 16)" train.precision=bf16
        train.log_every=1 checkpoint.every=10 train.eval_tokens=8192 train.progress=false)
run "$BIN/scalelab-train" "${RESUME[@]}" "hydra.run.dir=$OUT/resume-whole"
if [[ $DRY == 1 ]]; then
    echo "+ SCALELAB_FAULTS=die_at_step:35 $BIN/scalelab-train ${RESUME[*]} hydra.run.dir=$OUT/resume-killed  (exits 137)"
else
    SCALELAB_FAULTS=die_at_step:35 "$BIN/scalelab-train" "${RESUME[@]}" "hydra.run.dir=$OUT/resume-killed" || true
fi
run "$BIN/scalelab-train" "${RESUME[@]}" "hydra.run.dir=$OUT/resume-killed"

stage "5. a two-budget packed IsoFLOP sweep and its report"
run "$BIN/scalelab-train" -m hydra/sweeper=isoflop hydra/launcher=packed "hydra.sweeper.budgets=[3e13,1e14]" \
    "hydra.sweeper.models=[p1m,p3m,p10m,p30m]" "hydra.sweeper.tokens_per_param=[2,2000]" data.seq_len=256 \
    train.batch_size=16 train.precision=bf16 train.eval_tokens=65536 train.progress=false "hydra.sweep.dir=$OUT/iso"
if [[ $DRY == 0 ]]; then
    run "$BIN/scalelab" analyze report "$OUT/iso" -o "$OUT/iso/report" --bootstrap 20 || true
else
    echo "+ $BIN/scalelab analyze report $OUT/iso -o $OUT/iso/report --bootstrap 20"
fi

stage "summary"
if [[ $DRY == 1 ]]; then
    echo "dry run: every stage planned, its training configs checked, nothing trained"
    exit 0
fi
"$PY" - "$OUT" "$ATTN_TOL" <<'EOF'
import json, sys
from pathlib import Path

out, tol = Path(sys.argv[1]), float(sys.argv[2])
rows = []
def losses(run):
    path = out / run / "metrics.jsonl"
    return [(r["step"], r["train_loss"]) for r in map(json.loads, path.read_text().splitlines())
            if "train_loss" in r] if path.exists() else []
try:
    for s in json.loads((out / "bench.json").read_text())["results"]:
        rows.append((f"bench {s['name']}", f"{s['tokens_per_second']:,.0f} tok/s, MFU {s['mfu']:.1%}"))
except Exception as exc:  # noqa: BLE001 - a stage that failed is reported, not fatal
    rows.append(("bench", f"missing ({exc})"))
a, b = losses("attention-cudnn"), losses("attention-xla")
if a and len(a) == len(b):
    worst = max(abs(x[1] / y[1] - 1) for x, y in zip(a, b))
    rows.append(("cuDNN vs XLA attention", f"max rel. loss difference {worst:.2e} over {len(a)} steps "
                 f"({'within' if worst <= tol else 'OVER'} {tol:g})"))
else:
    rows.append(("cuDNN vs XLA attention", "missing"))
try:
    (p,) = json.loads((out / "packed.json").read_text())["sweeps"]
    rows.append(("16 packed vs sequential", f"{p['speedup']['in-process']:.2f}x faster packed; effective MFU "
                 f"{p['mfu']['packed']:.1%} packed, {p['mfu']['in-process']:.1%} sequential"))
except Exception as exc:  # noqa: BLE001
    rows.append(("16 packed vs sequential", f"missing ({exc})"))
whole, killed = losses("resume-whole"), losses("resume-killed")
same = bool(whole) and whole == killed
rows.append(("kill -9 and resume", f"{'bitwise equal' if same else 'DIFFERENT'} ({len(killed)} steps logged, "
             f"{len({s for s, _ in killed})} distinct)"))
report = out / "iso" / "report" / "report.md"
rows.append(("packed IsoFLOP sweep", f"report at {report}" if report.exists() else "no report"))
width = max(len(k) for k, _ in rows)
print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
EOF
