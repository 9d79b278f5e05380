"""The status of a sweep directory: its planned jobs joined with the run directories found.

The IsoFLOP sweeper writes `plan.json` (every planned job: its overrides, its run subdirectory and
its numbers); Hydra's basic sweeper leaves `multirun.yaml`, from which the planned grid is expanded
again. `sweep_status` joins the planned jobs with the run directories found (their
`summary.json`), so a job that never started shows as `missing`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from scalelab.config import run_name
from scalelab.runfiles import CLUSTER_JOBS, HYDRA, PLAN, SUMMARY
from scalelab.sweep.plan import fmt_budget, format_table

MULTIRUN_FILE = "multirun.yaml"


# ----------------------------------------------------------------------------------------------
# the cluster jobs of a packed sweep on SLURM


def record_cluster_jobs(sweep_dir, submitted: list[tuple[str, list[str]]]) -> None:
    """Add (job id, member run directory names) of each job just submitted to the sweep's record."""
    path = Path(sweep_dir) / CLUSTER_JOBS
    record = _read_json(path) or {"jobs": []}
    record["jobs"] += [{"job_id": str(job_id), "members": list(members)} for job_id, members in submitted]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def cluster_jobs(sweep_dir) -> dict[str, str]:
    """{member run directory name: the id of the last job submitted to train it}."""
    record = _read_json(Path(sweep_dir) / CLUSTER_JOBS) or {"jobs": []}
    return {member: job["job_id"] for job in record["jobs"] for member in job["members"]}


# ----------------------------------------------------------------------------------------------
# status of a sweep directory

STATUSES = ("completed", "running", "started", "failed", "preempted", "diverged", "missing")


def _kv(overrides) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, sep, value = str(o).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _grid_from_multirun(sweep_dir: Path) -> list[dict]:
    """The jobs a basic-sweeper multirun planned, expanded from its multirun.yaml."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(sweep_dir / MULTIRUN_FILE)
    hydra = cfg.get("hydra", {})
    task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=[]) or [])
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    lines = [f"{k}={v}" for k, v in dict(params).items()] + task
    parser = OverridesParser.create()
    combos = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)[0]
    od = OmegaConf.select(cfg, "hydra.job.config.override_dirname", default=None)
    kv_sep = od.kv_sep if od is not None else "="
    item_sep = od.item_sep if od is not None else ","
    exclude = list(od.exclude_keys) if od is not None else []
    raw = OmegaConf.to_container(hydra.sweep, resolve=False).get("subdir") if "sweep" in hydra else None
    jobs = []
    for num, combo in enumerate(combos):
        dirname = get_overrides_dirname(parser.parse_overrides(list(combo)), exclude, item_sep, kv_sep)
        subdir = _resolve_subdir(raw, dirname, num) if raw is not None else None
        jobs.append({"overrides": list(combo), "subdir": subdir})
    return jobs


def _resolve_subdir(template: str, override_dirname: str, num: int) -> str | None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    node = OmegaConf.create({"hydra": {"job": {"override_dirname": override_dirname, "num": num},
                                       "sweep": {"subdir": template}}})
    try:
        return str(OmegaConf.select(node, "hydra.sweep.subdir"))
    except Exception:  # an interpolation we cannot reproduce outside Hydra
        return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _run_overrides(run_dir: Path) -> list[str] | None:
    path = run_dir / HYDRA / "overrides.yaml"
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    return [str(x) for x in OmegaConf.load(path)]


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return None


def _model_order(name: str, params: int | None) -> tuple:
    if params is not None:
        return (0, params, name)
    m = re.fullmatch(r"p(\d+(?:\.\d+)?)([kmb])", name or "")
    if m:
        return (0, float(m.group(1)) * {"k": 1e3, "m": 1e6, "b": 1e9}[m.group(2)], name)
    return (1, 0, name or "")


def _num(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.inf


def sweep_status(sweep_dir) -> dict:
    """Planned jobs joined with the run directories found: one cell per job, and the grid layout."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep directory")
    kind = "runs"
    planned: list[dict] = []
    plan = _read_json(sweep_dir / PLAN)
    if plan is not None:
        kind = "isoflop"
        planned = [{"overrides": j["overrides"], "subdir": j.get("subdir"), "plan": j} for j in plan["jobs"]]
    elif (sweep_dir / MULTIRUN_FILE).exists():
        kind = "grid"
        planned = _grid_from_multirun(sweep_dir)

    jobs: dict[str, dict] = {}
    for p in planned:
        key = p.get("subdir") or " ".join(p["overrides"])
        jobs[key] = {"subdir": p.get("subdir"), "overrides": list(p["overrides"]), "planned": True,
                     "plan": p.get("plan")}
    for run_dir in sorted(sweep_dir.iterdir()):
        if not run_dir.is_dir() or run_dir.name.startswith("."):
            continue
        if not ((run_dir / SUMMARY).exists() or (run_dir / HYDRA).exists()):
            continue
        job = jobs.get(run_dir.name)
        if job is None:
            overrides = _run_overrides(run_dir) or []
            job = jobs.setdefault(run_dir.name, {"subdir": run_dir.name, "overrides": overrides,
                                                 "planned": False, "plan": None})
        job["exists"] = True

    cells, job_ids = [], cluster_jobs(sweep_dir)
    for job in jobs.values():
        run_dir = sweep_dir / job["subdir"] if job.get("subdir") else None
        summary = _read_json(run_dir / SUMMARY) if run_dir is not None and run_dir.is_dir() else None
        if summary is not None:
            status = summary.get("status", "unknown")
        elif run_dir is not None and run_dir.is_dir():
            status = "started"  # Hydra made the directory; the trainer has not written its summary yet
        else:
            status = "missing"
        kv = _kv(job["overrides"])
        plan_job = job.get("plan") or {}
        error = (summary or {}).get("error") or {}
        cells.append({
            "subdir": job.get("subdir"),
            # a packed group's job (cluster_jobs.json), else the SLURM job the run's summary names
            "job_id": job_ids.get(job.get("subdir") or "") or (summary or {}).get("slurm_job"),
            "group_job": (job.get("subdir") or "") in job_ids,
            "overrides": job["overrides"],
            "planned": job["planned"],
            "status": status,
            "model": kv.get("model") or (summary or {}).get("model") or plan_job.get("model") or "default",
            "params": (summary or {}).get("params") or plan_job.get("params"),
            "budget": (summary or {}).get("budget") or plan_job.get("budget"),
            "tokens": (summary or {}).get("tokens") or plan_job.get("tokens"),
            "flops": (summary or {}).get("flops") or plan_job.get("flops"),
            "final_eval_loss": (summary or {}).get("final_eval_loss"),
            "error": _first_line(error.get("message")) if isinstance(error, dict) else _first_line(str(error)),
            "_kv": kv,
        })

    # layout: rows are models (plus any other varying override), columns the budget or data.tokens
    keys = set().union(*(c["_kv"] for c in cells)) if cells else set()
    column_key = "budget" if "budget" in keys else ("data.tokens" if "data.tokens" in keys else None)
    for c in cells:
        c["column"] = c["_kv"].get(column_key, "-") if column_key else "-"
        if column_key == "budget" and c["column"] == "-" and c["budget"] is not None:
            c["column"] = fmt_budget(c["budget"])

    def distinguishes(key: str) -> bool:  # does `key` tell apart jobs of the same model and column?
        seen: dict[tuple, set] = {}
        for c in cells:
            seen.setdefault((c["model"], c["column"]), set()).add(c["_kv"].get(key))
        return any(len(v) > 1 for v in seen.values())

    varying = sorted(k for k in keys - {"model", column_key} if distinguishes(k))
    for c in cells:
        c["row"] = " ".join([c["model"]] + [f"{k}={c['_kv'][k]}" for k in varying if k in c["_kv"]])
    params_of_model = {}
    for c in cells:
        if c["params"] is not None:
            params_of_model.setdefault(c["model"], c["params"])
    rows = sorted({c["row"] for c in cells},
                  key=lambda r: (_model_order(r.split(" ")[0], params_of_model.get(r.split(" ")[0])), r))
    columns = sorted({c["column"] for c in cells}, key=lambda v: (_num(v), v))
    for c in cells:
        del c["_kv"]
    counts = {s: n for s in STATUSES if (n := sum(c["status"] == s for c in cells))}
    for c in cells:
        if c["status"] not in STATUSES:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
    return {"sweep_dir": str(sweep_dir), "kind": kind, "row_key": "model", "column_key": column_key,
            "rows": rows, "columns": columns, "cells": cells, "counts": counts}


def job_where(sweep_dir, job_id: str | None) -> str:
    """` (SLURM job ID, log: PATH)` for a status line: the job, and the error log submitit kept
    for it under the sweep when there is one."""
    if not job_id:
        return ""
    log = Path(sweep_dir) / ".submitit" / job_id / f"{job_id}_0_log.err"
    return f" (SLURM job {job_id}, log: {log})" if log.is_file() else f" (SLURM job {job_id})"


def format_status(status: dict) -> str:
    cells = {(c["row"], c["column"]): c for c in status["cells"]}
    header = [status["row_key"] + " \\ " + (status["column_key"] or "")] + status["columns"]
    rows = []
    for r in status["rows"]:
        row = [r]
        for col in status["columns"]:
            c = cells.get((r, col))
            if c is None:
                row.append("")
            elif c["status"] == "completed" and isinstance(c["final_eval_loss"], (int, float)):
                row.append(f"completed {c['final_eval_loss']:.4f}")
            else:
                row.append(c["status"])
        rows.append(row)
    counts = ", ".join(f"{n} {s}" for s, n in status["counts"].items()) or "no jobs"
    out = [f"{status['sweep_dir']} ({status['kind']}): {counts}"]
    if rows:
        out.append(format_table(header, rows))
    failed = [c for c in status["cells"] if c["status"] in ("failed", "diverged", "preempted")]
    for c in failed:
        out.append(f"  {c['status']}: {c['row']} @ {c['column']}: {c['error'] or '(no error message)'}"
                   f"  [{c['subdir']}]" + job_where(status["sweep_dir"], c.get("job_id")))
    for c in status["cells"]:
        if c["status"] == "missing":
            out.append(f"  missing: {' '.join(c['overrides'])}  [{c['subdir']}]")
    by_job: dict[str, list] = {}
    for c in status["cells"]:
        if c.get("job_id") and c.get("group_job"):
            by_job.setdefault(c["job_id"], []).append(c)
    for job_id, members in by_job.items():
        out.append(f"  SLURM job {job_id}: " + ", ".join(f"{c['subdir']} ({c['status']})" for c in members))
    return "\n".join(out)

