"""Experiment trackers: where a run's metrics go besides `metrics.jsonl` (`logger=[...]`).

Each tracker is one small class with the same three calls: `start(run_name, config, run_dir)`
once per attempt, `log(step, metrics)` for each logged row, `finish(summary)` at the end (any
status). A tracker's module is imported only when a run selects it, so that W&B and MLflow cost
nothing (not even an import) to runs and commands that do not use them; `check` finds a missing
package before anything is compiled and names the extra that installs it.

Resuming: a tracker that keeps its own history (W&B, MLflow) records its run id in
`RUN_DIR/trackers.json` and continues that run; the rows an earlier attempt logged after the
checkpoint it resumes from are logged again by the new attempt, identical, so they are skipped
(`Trackers` drops each row at or below the last step the earlier attempts logged).
TensorBoard gets every row: its reader discards the steps an event file logged past a restart.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from scalelab.config import ConfigError
from scalelab.runfiles import METRICS, TRACKERS

log = logging.getLogger("scalelab")


class Tracker(Protocol):
    keeps_history: bool  # it continues one run across resumes (so rows it has must not come twice)

    def start(self, run_name: str, config: dict, run_dir: Path) -> None: ...
    def log(self, step: int, metrics: dict) -> None: ...
    def finish(self, summary: dict) -> None: ...


@dataclass(frozen=True)
class Kind:
    module: str  # scalelab.train.trackers.<module>, holding class `cls`
    cls: str
    package: str | None = None  # the import it needs beyond scalelab's own dependencies
    extra: str | None = None  # the scalelab extra that installs it


KINDS = {
    "tensorboard": Kind("tensorboard", "TensorBoard"),
    "wandb": Kind("wandb", "Wandb", "wandb", "wandb"),
    "mlflow": Kind("mlflow", "MLflow", "mlflow", "mlflow"),
}


def selected(logger_cfg) -> list[str]:
    """The trackers `logger=[...]` turned on (metrics.jsonl is not one: it is always written)."""
    return [name for name in KINDS if getattr(logger_cfg, name).enabled]


def options_of(tracker_cfg) -> dict:
    """A tracker's options as a plain dict (from its typed config group)."""
    if dataclasses.is_dataclass(tracker_cfg):
        return dataclasses.asdict(tracker_cfg)
    return dict(tracker_cfg)


def check(logger_cfg) -> None:
    """Fail before compilation when a selected tracker's package is missing, naming the extra."""
    for name in selected(logger_cfg):
        kind = KINDS[name]
        if kind.package and importlib.util.find_spec(kind.package) is None:
            raise ConfigError("logger", f"logger={name} needs the {kind.package} package: "
                                        f"pip install 'scalelab[{kind.extra}]'")


def create(name: str, options: dict) -> Tracker:
    kind = KINDS[name]
    try:
        module = importlib.import_module(f"{__name__}.{kind.module}")
    except ImportError as exc:
        hint = f": pip install 'scalelab[{kind.extra}]'" if kind.extra else ""
        raise ConfigError("logger", f"logger={name} could not be loaded ({exc}){hint}") from exc
    return getattr(module, kind.cls)(options)


def last_logged_step(run_dir) -> int:
    """The highest step in metrics.jsonl: what earlier attempts gave the trackers (0 if none)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0
    last = 0
    for line in path.read_text().splitlines():
        try:
            last = max(last, int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):  # a line cut short by a kill
            continue
    return last


def read_ids(run_dir) -> dict:
    """`trackers.json`: each tracker's record of the run it continues ({} before the first)."""
    path = Path(run_dir) / TRACKERS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_id(run_dir, name: str, record: dict) -> None:
    from scalelab.train.runlog import write_json_atomic

    write_json_atomic(Path(run_dir) / TRACKERS, read_ids(run_dir) | {name: record})


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}


class Trackers:
    """The selected trackers of one run, fed together; one that fails is dropped with a warning
    (a tracker's outage never stops training)."""

    def __init__(self, logger_cfg, run_dir, config: dict, logged: int = 0):
        run_dir = Path(run_dir)
        earlier = read_ids(run_dir)
        self.open: list[tuple[str, Tracker, int]] = []
        for name in selected(logger_cfg):
            tracker = create(name, options_of(getattr(logger_cfg, name)))
            tracker.start(run_dir.name, config, run_dir)
            # rows up to `skip` are in this tracker's run already (logged by an earlier attempt)
            skip = logged if tracker.keeps_history and name in earlier else 0
            self.open.append((name, tracker, skip))

    def log(self, row: dict) -> None:
        values = None
        for entry in list(self.open):
            name, tracker, skip = entry
            if row["step"] <= skip:
                continue
            values = values if values is not None else _numbers(row)
            try:
                tracker.log(row["step"], values)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                log.warning("logger %s failed (%s: %s); the run goes on without it", name, type(exc).__name__, exc)
                self.open.remove(entry)

    def finish(self, summary: dict) -> None:
        summary = {k: v for k, v in summary.items() if k != "config"}  # the config is recorded at start
        for name, tracker, _ in self.open:
            try:
                tracker.finish(summary)
            except Exception as exc:  # noqa: BLE001 - the run's own files are written already
                log.warning("logger %s failed to finish (%s: %s)", name, type(exc).__name__, exc)
        self.open = []
