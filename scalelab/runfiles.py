"""The names of the files a run and a sweep write: defined here once, read by every layer.

A run directory holds `.hydra/` (Hydra's), `train.log`, `metrics.jsonl` (one JSON object per
logged step), `summary.json` (the run's record), `checkpoints/<step>/` (Orbax),
`checkpoint_files/`, `tensorboard/`, what the trackers write (`trackers.json`, `wandb/`, `mlruns/`)
and, once `scalelab eval --tasks --record` scored a finished run, `tasks.json`; a sweep directory
holds its runs and the IsoFLOP sweeper's `plan.json`.
"""

from __future__ import annotations

from pathlib import Path

HYDRA = ".hydra"
TRAIN_LOG = "train.log"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
DAMAGED = "checkpoints_damaged"
CHECKPOINT_FILES = "checkpoint_files"  # <step>.json: each checkpoint's file sizes and checksums
TENSORBOARD = "tensorboard"
TRACKERS = "trackers.json"  # the W&B run id and MLflow run id of this run directory, kept for resumes
WANDB = "wandb"  # W&B's own directory (offline runs)
MLRUNS = "mlruns"  # MLflow's file store, unless logger.mlflow.tracking_uri names another
TASKS = "tasks.json"  # task scores of the final checkpoint, recorded after training (eval --tasks --record)
PLAN = "plan.json"
CLUSTER_JOBS = "cluster_jobs.json"  # a sweep's cluster jobs (slurm_packed): each job id and its members

# what Hydra (and our logging) creates before a run has started: a failed start may remove these
START_FILES = frozenset({HYDRA, TRAIN_LOG, "main.log"})


def summary_path(run_dir) -> Path:
    return Path(run_dir) / SUMMARY


def metrics_path(run_dir) -> Path:
    return Path(run_dir) / METRICS
