"""Collect run directories (summary.json + metrics.jsonl) into a runs table.

A sweep directory holds run directories at any depth; each run directory is
recognised by its ``summary.json``. The sweep name is the name of the top
directory given. Runs that did not complete (failed, diverged, preempted,
running) or have no final eval loss are excluded with one warning that counts
them by status.

Beside N, D, C and the loss, the table has what a study filters and groups
runs by: the short-name columns of ``STUDY_COLUMNS`` (``lr``, ``seed``, ...),
``mfu``, ``wall_seconds`` and ``packed_with`` (the size of the run's packed
group) when the summaries have them, and one column per hyperparameter that
varies between the collected runs, named by its dotted config key
(``optimizer.weight_decay``, ``model.d_model``, ...).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scalelab import paths
from scalelab.runfiles import CHECKPOINTS, HYDRA, METRICS, SUMMARY, TASKS

from scalelab.analysis.errors import AnalysisError, AnalysisWarning
from scalelab.analysis.runs.table import CURVE_COLUMNS, INCLUDED_STATUS

NO_LOSS_STATUS = "completed-without-loss"
UNREADABLE_STATUS = "unreadable"

RUN_COLUMNS = ("sweep", "run_dir", "status", "model", "params", "params_total", "tokens",
               "flops", "flops_per_token", "budget", "loss", "bpb")
# the hyperparameters every scaling study filters on, by short name, and the config key of each
STUDY_COLUMNS = {"lr": "optimizer.lr", "seed": "train.seed", "batch_size": "train.batch_size",
                 "seq_len": "data.seq_len", "schedule": "schedule.name", "warmup": "schedule.warmup"}
# run facts copied from summary.json when present (packed_with becomes its group's size)
SUMMARY_COLUMNS = ("mfu", "wall_seconds", "packed_with", "params_active", "experts", "top_k")
TASK_PREFIX = "task/"  # summary fields task/NAME/acc, acc_norm, bpb: kept as columns of those names
# config keys the table already has under another name
COVERED_KEYS = frozenset({"model.name", "data.tokens", "budget", *STUDY_COLUMNS.values()})
CONFIG = "_config"   # a row's flattened config while collecting; not a column of the result


def _number(value) -> float:
    """A float from a JSON value; NaN for null, missing or non-numeric."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def flatten_config(config, prefix: str = "") -> dict:
    """{'optimizer.lr': 0.01, ...} from a nested config; lists become JSON text (comparable, writable)."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories (those with a summary.json) under ``sweep_dir``, sorted."""
    found = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = sorted(d for d in dirs if d not in (HYDRA, CHECKPOINTS))
        if SUMMARY in files:
            found.append(Path(root))
    return sorted(found)


def recorded_task_scores(run_dir: Path, final_step) -> dict:
    """The task scores `scalelab eval --tasks --record` kept in the run's tasks.json, if they were
    taken at the run's final step (a record of an earlier training of the directory is ignored)."""
    path = run_dir / TASKS
    if not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text())
        entries = recorded["tasks"].values() if recorded.get("step") == final_step else []
        return {k: v for entry in entries for k, v in entry["scores"].items() if k.startswith(TASK_PREFIX)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(f"{path}: unreadable ({exc}); its task scores are left out", AnalysisWarning, stacklevel=2)
        return {}


def read_summary_row(run_dir: Path, sweep: str) -> dict:
    """One table row from a run's summary.json (status 'unreadable' if it can't be parsed)."""
    row = {"sweep": sweep, "run_dir": str(run_dir)}
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        row.update(status=UNREADABLE_STATUS, error=str(exc))
        return row
    status = str(summary.get("status") or "unknown")
    if summary.get("role") == "wsd-stable":  # the shared stable phase of WSD branches: not a scaling point
        status = "wsd-stable"
    row.update(
        status=status,
        model=summary.get("model"),
        params=_number(summary.get("params")),
        params_total=_number(summary.get("params_total")),
        tokens=_number(summary.get("tokens")),
        flops=_number(summary.get("flops")),
        flops_per_token=_number(summary.get("flops_per_token")),
        budget=_number(summary.get("budget")),
        loss=_number(summary.get("final_eval_loss")),
        bpb=_number(summary.get("final_eval_bpb")),
    )
    for column in SUMMARY_COLUMNS:
        if column in summary:
            value = summary[column]
            row[column] = len(value) if isinstance(value, list) else _number(value)
    for column in (k for k in summary if k.startswith(TASK_PREFIX)):  # train.eval_tasks' final scores
        row[column] = _number(summary[column])
    for column, value in recorded_task_scores(run_dir, summary.get("steps")).items():
        row.setdefault(column, _number(value))  # scored after training (eval --tasks --record)
    config = summary.get("config")
    row[CONFIG] = flatten_config(config) if isinstance(config, dict) else {}
    usable = all(np.isfinite(row[k]) and row[k] > 0 for k in ("params", "tokens", "flops", "loss"))
    if status == INCLUDED_STATUS and not usable:
        row["status"] = NO_LOSS_STATUS
    return row


def read_curve(run_dir: Path) -> tuple[pd.DataFrame, int]:
    """A run's metrics.jsonl as a curve table; also the number of unreadable lines."""
    path = run_dir / METRICS
    if not path.is_file():
        return pd.DataFrame(columns=list(CURVE_COLUMNS)), 0
    rows, bad = [], 0
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad += 1  # e.g. a last line cut short when the run was killed
                continue
            if not isinstance(record, dict):
                bad += 1
                continue
            rows.append({
                "run_dir": str(run_dir),
                "step": _number(record.get("step")),
                "tokens": _number(record.get("tokens")),
                "flops": _number(record.get("flops")),
                "train_loss": _number(record.get("train_loss")),
                "eval_loss": _number(record.get("eval_loss")),
            })
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS)), bad


def collect(dirs, keep_excluded: bool = False, curves: bool = True) -> pd.DataFrame:
    """Collect sweep (or run) directories into one runs table.

    Returns the completed runs (all runs, marked by ``status``, when
    ``keep_excluded``). ``attrs['run_counts']`` counts runs by status and
    ``attrs['curves']`` holds the training curves of the included runs.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    urls: dict[Path, str] = {}  # local copy -> URL, for the directories in an object store
    dirs = [fetch_run_files(str(d), urls) if paths.is_url(d) else Path(d) for d in dirs]
    if not dirs:
        raise AnalysisError("collect: no sweep directories given")
    rows = []
    for sweep_dir in dirs:
        shown = urls.get(sweep_dir, str(sweep_dir))
        if not sweep_dir.is_dir():
            raise AnalysisError(f"sweep directory not found: {shown!r}")
        run_dirs = find_run_dirs(sweep_dir)
        if not run_dirs:
            raise AnalysisError(f"no runs found under {shown!r} (no {SUMMARY} at any depth)")
        sweep = sweep_dir.resolve().name
        rows.extend(read_summary_row(run_dir, sweep) for run_dir in run_dirs)
    table = pd.DataFrame(rows)
    for column in RUN_COLUMNS:
        if column not in table.columns:
            table[column] = math.nan
    extra = [c for c in table.columns if c not in RUN_COLUMNS]
    table = table[list(RUN_COLUMNS) + extra]
    if CONFIG not in table.columns:  # only unreadable summaries
        table[CONFIG] = [{} for _ in range(len(table))]
    counts = table["status"].value_counts().to_dict()
    included = table["status"] == INCLUDED_STATUS
    if not included.all():
        detail = ", ".join(f"{n} {s}" for s, n in table.loc[~included, "status"].value_counts().items())
        warnings.warn(f"collect: excluded {int((~included).sum())} of {len(table)} runs ({detail})",
                      AnalysisWarning, stacklevel=2)
    if not included.any():
        raise AnalysisError(f"collect: none of the {len(table)} runs completed with a final eval loss "
                            f"({', '.join(f'{n} {s}' for s, n in counts.items())})")
    out = add_config_columns((table if keep_excluded else table[included]).reset_index(drop=True))
    out.attrs["run_counts"] = {str(k): int(v) for k, v in counts.items()}
    if curves:
        out.attrs["curves"] = collect_curves(out.loc[out["status"] == INCLUDED_STATUS, "run_dir"])
    return show_urls(out, urls) if urls else out


def fetch_run_files(url: str, urls: dict) -> Path:
    """A sweep (or run) directory in an object store: its summaries and metrics, downloaded into
    `$SCALELAB_CACHE/downloads/` (checkpoints and .hydra are not)."""
    def wanted(name: str) -> bool:
        parts = name.split("/")
        return parts[-1] in (SUMMARY, METRICS) and not {HYDRA, CHECKPOINTS} & set(parts[:-1])

    local = paths.fetch(url, wanted, paths.DOWNLOADS)
    urls[local] = url.rstrip("/")
    return local


def show_urls(table: pd.DataFrame, urls: dict) -> pd.DataFrame:
    """The run_dir columns of the table and its curves with each local copy named by its URL."""
    def url_of(run_dir: str) -> str:
        for local, url in urls.items():
            if Path(run_dir) == local or local in Path(run_dir).parents:
                rel = Path(run_dir).relative_to(local).as_posix()
                return url if rel == "." else f"{url}/{rel}"
        return run_dir

    table["run_dir"] = table["run_dir"].map(url_of)
    if "curves" in table.attrs and len(table.attrs["curves"]):
        table.attrs["curves"]["run_dir"] = table.attrs["curves"]["run_dir"].map(url_of)
    return table


def _varying_keys(configs: list[dict]) -> list[str]:
    """Config keys whose value is not the same in every run that recorded a config (a key some of
    them lack varies; a summary without any config, an old or hand-made one, says nothing)."""
    configs = [c for c in configs if c]
    keys = sorted(set().union(*configs)) if configs else []
    absent = "\0absent"
    return [key for key in keys
            if len({json.dumps(c.get(key, absent), sort_keys=True, default=repr) for c in configs}) > 1]


def add_config_columns(table: pd.DataFrame) -> pd.DataFrame:
    """Replace the rows' flattened configs by columns: RUN_COLUMNS, the STUDY_COLUMNS by short name
    (when some run has the key), the SUMMARY_COLUMNS, then every other config key that varies
    between these runs by its dotted name, then anything else (an unreadable run's error)."""
    configs = [c if isinstance(c, dict) else {} for c in table.pop(CONFIG)]
    study = {short: [c.get(key) for c in configs] for short, key in STUDY_COLUMNS.items()
             if any(key in c for c in configs)}
    varying = {key: [c.get(key) for c in configs] for key in _varying_keys(configs)
               if key not in COVERED_KEYS and key not in table.columns and key not in study}
    parts = [table[[c for c in RUN_COLUMNS if c in table.columns]],
             pd.DataFrame(study, index=table.index),
             table[[c for c in SUMMARY_COLUMNS if c in table.columns]],
             table[sorted(c for c in table.columns if c.startswith(TASK_PREFIX))],
             pd.DataFrame(varying, index=table.index),
             table[[c for c in table.columns if c not in RUN_COLUMNS and c not in SUMMARY_COLUMNS
                    and not c.startswith(TASK_PREFIX)]]]
    out = pd.concat(parts, axis=1)
    out.attrs = dict(table.attrs)
    return out


def collect_curves(run_dirs) -> pd.DataFrame:
    """The long training-curves table (run_dir, step, tokens, flops, train_loss, eval_loss)."""
    parts, bad_lines = [], 0
    for run_dir in run_dirs:
        curve, bad = read_curve(Path(run_dir))
        bad_lines += bad
        if len(curve):
            parts.append(curve)
    if bad_lines:
        warnings.warn(f"collect: skipped {bad_lines} unreadable line(s) in {METRICS} files",
                      AnalysisWarning, stacklevel=3)
    if not parts:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    return pd.concat(parts, ignore_index=True)
