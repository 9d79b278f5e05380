#!/usr/bin/env bash
# The main job: set up the environment, then train a small model on the built-in corpus
# (the Python standard library's sources) and print its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/scalelab-train model=p50k data.tokens=300000 data.seq_len=128 train.batch_size=16 \
  hydra.run.dir=runs/quickstart "$@"
.venv/bin/python - <<'PY'
import json
s = json.load(open("runs/quickstart/summary.json"))
print(f"\nruns/quickstart: {s['status']}, {s['model']} (N={s['params']:,}) on {s['tokens']:,} tokens, "
      f"final eval loss {s['final_eval_loss']:.3f} nats/token = {s['final_eval_bpb']:.3f} bits/byte, "
      f"{s['tokens_per_second']:,.0f} tokens/s, MFU {s['mfu']:.1%}, {s['wall_seconds']:.0f} s")
PY
