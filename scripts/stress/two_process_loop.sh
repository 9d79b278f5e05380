#!/usr/bin/env bash
# The two-process hang check (NOTES.md, session 10): N rounds of "SIGTERM to process 1 at step 23, then
# relaunch", then N uninterrupted two-process runs (two CPU devices each, loopback), one line per round.
# A pair still alive after TIMEOUT seconds counts as a hang: both processes' stacks go to OUT/<run>.stacks
# (py-spy, when installed) and the pair is killed.
#   bash scripts/stress/two_process_loop.sh [N] [OUT]      (N=20, OUT=/tmp/two_process_loop)
set -uo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20}; OUT=${2:-/tmp/two_process_loop}; TIMEOUT=${TIMEOUT:-900}
mkdir -p "$OUT"

last_step() { tail -n 1 "$1/metrics.jsonl" 2>/dev/null | grep -o '"step": [0-9]*' | grep -o '[0-9]*$'; }

pair() {  # pair RUN_DIR [KILL_AT]: one two-process run; prints "hang" if it outlived TIMEOUT
  local run=$1 kill_at=${2:-} port pids=() i t alive sent=
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  for i in 0 1; do
    XLA_FLAGS=--xla_force_host_platform_device_count=2 .venv/bin/scalelab-train model=p30k data.tokens=163840 \
      data.seq_len=64 train.batch_size=16 mesh.fsdp=4 train.progress=false train.log_every=1 \
      distributed.coordinator=127.0.0.1:$port distributed.num_processes=2 distributed.process_id=$i \
      hydra.run.dir="$run" > "$run.p$i.log" 2>&1 &
    pids+=($!)
  done
  for t in $(seq 1 $((TIMEOUT * 5))); do
    alive=0; for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    if [ -n "$kill_at" ] && [ -z "$sent" ] && [ "$(last_step "$run" || echo 0)" -ge "$kill_at" ] 2>/dev/null; then
      kill -TERM "${pids[1]}"; sent=1
    fi
    sleep 0.2
  done
  if [ $alive = 1 ]; then
    echo hang
    for i in "${pids[@]}"; do .venv/bin/py-spy dump --native --pid "$i" >> "$run.stacks" 2>&1 || true; kill -9 "$i"; done
  fi
  wait
}

status() { .venv/bin/python -c "import json, sys; s = json.load(open(sys.argv[1] + '/summary.json')); \
print(s['status'], s.get('resumed_from') or '', s.get('final_eval_loss') or '')" "$1"; }

for n in $(seq 1 "$N"); do
  run=$OUT/sigterm$n; rm -rf "$run" "$run".*; t0=$(date +%s)
  first=$(pair "$run" 23); before=$(status "$run"); again=$(pair "$run")
  echo "sigterm+relaunch $n: first ${first:-ended} ($before), relaunch ${again:-ended} ($(status "$run")), $(( $(date +%s) - t0 )) s"
  rm -rf "$run/checkpoints"
done
for n in $(seq 1 "$N"); do
  run=$OUT/straight$n; rm -rf "$run" "$run".*; t0=$(date +%s)
  result=$(pair "$run")
  echo "uninterrupted $n: ${result:-ended} ($(status "$run")), $(( $(date +%s) - t0 )) s"
  rm -rf "$run/checkpoints"
done
