#!/usr/bin/env bash
# Run one `scalelab-train` on every host of a Cloud TPU pod slice, all writing one run directory.
#
#   scripts/tpu_launch.sh --tpu NAME --zone ZONE [--project P] [--run-dir DIR] [--workdir DIR] [--dry-run] \
#       -- model=p1b data=prepared data.path=gs://... data.tokens=2e10
#
# Every host runs the same command with the same hydra.run.dir (chosen once, here, not per host:
# `${now:}` would differ between hosts); jax.distributed.initialize() finds the pod's other hosts
# by itself. Only process 0 writes metrics and summaries, but checkpoints are written by every host:
# the run directory must be on storage every host mounts at the same path (NFS, Filestore, gcsfuse).
# --workdir is the scalelab checkout on the hosts, with its .venv (default: ~/scalelab).
# --dry-run prints the gcloud command instead of running it.
set -euo pipefail
TPU="" ZONE="" PROJECT="" WORKDIR="~/scalelab" DRY=0
RUN_DIR="runs/tpu-$(date -u +%Y%m%d-%H%M%S)"
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) TPU=$2; shift 2 ;;
    --zone) ZONE=$2; shift 2 ;;
    --project) PROJECT=$2; shift 2 ;;
    --run-dir) RUN_DIR=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "unknown option: $1" >&2; usage ;;
  esac
done
[ -n "$TPU" ] && [ -n "$ZONE" ] || { echo "--tpu and --zone are required" >&2; usage; }

# the remote command: quote every override so the hosts' shell sees exactly what was given here
TRAIN="scalelab-train $(printf '%q ' "hydra.run.dir=$RUN_DIR" "$@")"
REMOTE="cd $WORKDIR && source .venv/bin/activate && $TRAIN"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$REMOTE")
[ -n "$PROJECT" ] && CMD+=(--project "$PROJECT")

if [ "$DRY" = 1 ]; then
  echo "on every host of $TPU: $REMOTE"
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
echo "run dir (on every host): $RUN_DIR" >&2
exec "${CMD[@]}"
