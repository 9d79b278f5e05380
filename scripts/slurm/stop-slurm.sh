#!/usr/bin/env bash
# Stop the daemons started by start-slurm.sh, each by the PID it recorded (never by name).
# Each takes ~2-3 s to exit on SIGTERM, so a whole layer is signalled at once, then waited for.
W=${SLURM_CI_DIR:-/tmp/slurm-ci}
stop_layer() {  # name=pidfile ...
  local -A pids=(); local a n f p
  for a in "$@"; do n=${a%%=*}; f=${a#*=}
    [ -s "$f" ] && p=$(cat "$f") && kill "$p" 2>/dev/null && pids[$n]=$p; done
  for n in "${!pids[@]}"; do p=${pids[$n]}
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$p" 2>/dev/null; then echo "$n ($p) still up after 15 s, SIGKILL"; kill -9 "$p"; else echo "stopped $n ($p)"; fi
  done
}
stop_layer slurmd="$W/run/slurmd.pid" slurmctld="$W/run/slurmctld.pid" slurmdbd="$W/run/slurmdbd.pid"
# munged: the copy start-slurm.sh recorded (munged rewrites /run/munge/munged.pid, so fall back to it)
MUNGED_PID="$W/run/munged.pid"; [ -s "$MUNGED_PID" ] || MUNGED_PID=/run/munge/munged.pid
stop_layer mariadb="$W/run/mariadb.pid" munged="$MUNGED_PID"
rm -f "$W"/run/*.pid
exit 0
