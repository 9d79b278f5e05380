"""MLflow: one MLflow run per run directory, continued across resumes.

The tracking store is `logger.mlflow.tracking_uri`, else MLFLOW_TRACKING_URI, else a file store in
`RUN_DIR/mlruns/` (`mlflow ui --backend-store-uri RUN_DIR/mlruns` shows it). The MLflow run is
named after the run directory and its id is kept in `RUN_DIR/trackers.json`, so a resumed
attempt continues it. It records the resolved config as params (dotted keys), each row's
scalars as metrics at their step, and the summary: numbers as metrics, the rest as tags
(`summary.<key>`), and the whole as the artifact `summary.json`. The client API only (no active
run, which is per thread), so packed members each have their own run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from scalelab.runfiles import MLRUNS
from scalelab.train import trackers

BATCH = 100  # MLflow takes at most 100 params (and 1000 metrics) per log_batch
MAX_PARAM = 6000  # characters of a param value
STATUS = {"completed": "FINISHED", "preempted": "KILLED", "running": "RUNNING"}  # else FAILED


def tracking_uri(option: str | None, run_dir: Path) -> str:
    uri = option or os.environ.get("MLFLOW_TRACKING_URI") or (Path(run_dir) / MLRUNS).resolve().as_uri()
    if urlparse(uri).scheme in ("", "file"):
        # MLflow 3 keeps its file store behind an opt-in; it is what a run directory holds
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = str(value)[:MAX_PARAM]
    return out


class MLflow:
    keeps_history = True

    def __init__(self, options: dict):
        self.options = options
        self.client = self.run_id = None

    def start(self, run_name: str, config: dict, run_dir: Path) -> None:
        uri = tracking_uri(self.options["tracking_uri"], run_dir)
        self.client = MlflowClient(tracking_uri=uri)
        record = trackers.read_ids(run_dir).get("mlflow", {})
        self.run_id = record.get("run_id") if record.get("tracking_uri") == uri else None
        if self.run_id and self._exists():
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = self.options["experiment"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])
        trackers.write_id(run_dir, "mlflow", {"run_id": self.run_id, "tracking_uri": uri})

    def _exists(self) -> bool:
        try:
            self.client.get_run(self.run_id)
            return True
        except MlflowException:
            return False

    def log(self, step: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self, summary: dict) -> None:
        now = int(time.time() * 1000)
        scalars = {k: v for k, v in summary.items() if not isinstance(v, dict | list) and v is not None}
        numbers = {k: float(v) for k, v in scalars.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(f"summary.{k}", v, now, summary.get("steps_done") or 0) for k, v in numbers.items()],
            tags=[RunTag(f"summary.{k}", str(v)[:MAX_PARAM]) for k, v in scalars.items() if k not in numbers])
        self.client.log_dict(self.run_id, json.loads(json.dumps(summary, default=str)), "summary.json")
        self.client.set_terminated(self.run_id, status=STATUS.get(summary.get("status"), "FAILED"))
