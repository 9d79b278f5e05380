"""Sweeps: the IsoFLOP plan (shared by the Hydra sweeper and `scalelab status`) and sweep status.

IsoFLOP plan. For a compute budget C and a model size with per-token training FLOPs f (the
ledger's convention, `scalelab.ledger.flops_per_token`, with the padded vocabulary of the data's
tokenizer and the run's `data.seq_len`), the tokens that spend C are D = C / f, rounded to a whole
number of steps of `train.batch_size x data.seq_len` tokens (the trainer runs whole steps only).
A pair is kept when its ledger FLOPs f * D land within `tolerance` (1%) of C and its tokens per
non-embedding parameter D / N lie inside the window; everything else is reported as a note.

Sweep directory. The IsoFLOP sweeper writes `plan.json` (every planned job: its overrides, its
run subdirectory and its numbers); Hydra's basic sweeper leaves `multirun.yaml`, from which the
planned grid is expanded again. `sweep_status` joins the planned jobs with the run directories
found (their `summary.json`), so a job that never started shows as `missing`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scalelab import ledger

PLAN_FILE = "plan.json"
MULTIRUN_FILE = "multirun.yaml"
# keys the IsoFLOP sweeper sets itself: a command-line value for them would contradict the plan
PLANNED_KEYS = ("model", "data.tokens", "budget")
DEFAULT_WINDOW = (2.0, 200.0)  # tokens per parameter: a decade either side of Chinchilla's ~20
# the throughput assumption behind the plan's time estimate (hydra.sweeper.flops_per_second /
# startup_seconds): a 2-core CPU host trains p50k at ~6e9 model FLOP/s (~35% of its measured
# matmul peak); set it to your devices' peak x expected MFU (e.g. 8 x 197e12 x 0.4 on a v5e-8)
DEFAULT_FLOPS_PER_SECOND = 5e9
DEFAULT_STARTUP_SECONDS = 20.0  # per job: imports, data, compilation, final eval and checkpoint


# ----------------------------------------------------------------------------------------------
# the plan


def vocab_size(data_cfg) -> int:
    """The tokenizer's vocabulary (unpadded) of a data config: byte = 257, prepared: its manifest."""
    if data_cfg.source == "prepared" and data_cfg.path:
        from scalelab.data.store import TokenStore

        return TokenStore(data_cfg.path).tokenizer.vocab_size
    if data_cfg.tokenizer != "byte":
        raise ValueError(f"data.tokenizer={data_cfg.tokenizer} needs data=prepared with data.path")
    from scalelab.data.tokenizer import ByteTokenizer

    return ByteTokenizer.vocab_size


def shape_of(cfg) -> ledger.Shape:
    """The ledger shape of a composed training config (padded vocabulary, the run's seq_len)."""
    return ledger.Shape.from_config(cfg.model, vocab_size(cfg.data), cfg.data.seq_len)


def fmt_budget(budget: float) -> str:
    """A budget as it appears in overrides and run directory names: 1e+15, 3e+16, 1.5e+17."""
    return f"{float(budget):.6g}"


@dataclass
class PlannedJob:
    budget: float
    model: str
    params: int  # N, non-embedding
    tokens: int  # D, a whole number of steps
    tokens_per_param: float
    steps: int
    flops: int  # ledger FLOPs of the run: flops_per_token * D
    flops_per_token: int
    flops_error: float  # (flops - budget) / budget
    est_seconds: float
    extra: list[str] = field(default_factory=list)  # other overrides (grid axes, fixed values)
    overrides: list[str] = field(default_factory=list)
    subdir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    jobs: list[PlannedJob]
    notes: list[str]  # dropped pairs and why
    window: tuple[float, float]
    tolerance: float
    flops_per_second: float
    startup_seconds: float

    def as_dict(self) -> dict:
        return {
            "kind": "isoflop",
            "window_tokens_per_param": list(self.window),
            "tolerance": self.tolerance,
            "flops_per_second": self.flops_per_second,
            "startup_seconds": self.startup_seconds,
            "convention": ledger.CONVENTION,
            "notes": self.notes,
            "jobs": [j.as_dict() for j in self.jobs],
        }


def plan_pair(shape: ledger.Shape, budget: float, tokens_per_step: int, *, model: str,
              window=DEFAULT_WINDOW, tolerance: float = 0.01,
              flops_per_second: float = DEFAULT_FLOPS_PER_SECOND,
              startup_seconds: float = DEFAULT_STARTUP_SECONDS,
              extra=(), varying=()) -> tuple[PlannedJob | None, str | None]:
    """One (budget, size) pair: the planned job, or None and the reason it was dropped.

    `extra`: the job's other overrides; `varying`: those of them that differ between grid points
    (they label the notes)."""
    fpt = ledger.flops_per_token(shape)
    n = ledger.non_embedding_params(shape)
    label = f"budget {fmt_budget(budget)}, {model}" + (f" [{' '.join(varying)}]" if varying else "")
    steps = round(ledger.tokens_for_budget(shape, budget) / tokens_per_step)
    if steps < 1:
        return None, (f"{label}: dropped, one step ({tokens_per_step} tokens = {fpt * tokens_per_step:.3g} FLOPs) "
                      f"exceeds the budget")
    tokens = steps * tokens_per_step
    flops = fpt * tokens
    error = (flops - budget) / budget
    if abs(error) > tolerance:
        return None, (f"{label}: dropped, {steps} whole steps of {tokens_per_step} tokens give {flops:.4g} FLOPs, "
                      f"{error:+.1%} off the budget (more than {tolerance:.0%})")
    tpp = tokens / n
    lo, hi = window
    if not lo <= tpp <= hi:
        return None, (f"{label}: dropped, D/N = {tokens:,}/{n:,} = {tpp:.3g} tokens per parameter, "
                      f"outside the window [{lo:g}, {hi:g}]")
    est = flops / flops_per_second + startup_seconds
    return PlannedJob(budget=float(budget), model=model, params=n, tokens=tokens, tokens_per_param=tpp,
                      steps=steps, flops=flops, flops_per_token=fpt, flops_error=error, est_seconds=est,
                      extra=list(extra)), None


def job_overrides(job: PlannedJob) -> list[str]:
    return [*job.extra, f"model={job.model}", f"data.tokens={job.tokens}", f"budget={fmt_budget(job.budget)}"]


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def varying_overrides(combos) -> tuple[list[str], list[list[str]]]:
    """Split grid points' overrides into those shared by all of them and those that vary."""
    combos = [list(c) for c in combos]
    shared = [o for o in combos[0] if all(o in c for c in combos)] if combos else []
    return shared, [[o for o in c if o not in shared] for c in combos]


def format_plan(plan: Plan) -> str:
    """The plan as printed before launching (and by dry_run)."""
    shared, varying = varying_overrides([j.extra for j in plan.jobs])
    with_extra = any(varying)
    header = ["budget", "model", "N", "D", "D/N", "steps", "FLOPs", "off", "est. time"]
    if with_extra:
        header.append("other overrides")
    rows = []
    for j, var in zip(plan.jobs, varying, strict=True):
        row = [fmt_budget(j.budget), j.model, f"{j.params:,}", f"{j.tokens:,}", f"{j.tokens_per_param:.3g}",
               f"{j.steps:,}", f"{j.flops:.4g}", f"{j.flops_error:+.2%}", _duration(j.est_seconds)]
        if with_extra:
            row.append(" ".join(var))
        rows.append(row)
    lo, hi = plan.window
    out = [f"IsoFLOP plan: {len(plan.jobs)} job(s); window {lo:g}-{hi:g} tokens per parameter; "
           f"ledger FLOPs within {plan.tolerance:.0%} of each budget"
           + (f"; with {' '.join(shared)}" if shared else "")]
    if rows:
        out.append(format_table(header, rows, right={2, 3, 4, 5, 6, 7, 8}))
    for note in plan.notes:
        out.append(f"  note: {note}")
    total = sum(j.est_seconds for j in plan.jobs)
    if plan.jobs:
        out.append(f"estimated time assumes {plan.flops_per_second:.3g} FLOP/s (hydra.sweeper.flops_per_second) "
                   f"+ {plan.startup_seconds:g} s per job (hydra.sweeper.startup_seconds): "
                   f"{_duration(total)} if run one after another")
    out.append(f"FLOPs convention: {ledger.CONVENTION}")
    return "\n".join(out)


def write_plan(sweep_dir, plan: Plan, extra: dict | None = None) -> Path:
    from scalelab.runlog import write_json_atomic

    path = Path(sweep_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {**plan.as_dict(), **(extra or {})})
    return path


# ----------------------------------------------------------------------------------------------
# completed runs (the sweeper skips them on relaunch; the trainer can use the same test)


def _normal(obj) -> Any:
    """JSON round trip: what a config looks like once written into summary.json."""
    return json.loads(json.dumps(obj, default=str))


def completed_with_config(run_dir, config: dict) -> bool:
    """True when `run_dir/summary.json` says completed and records this same resolved config.

    "Same" is the trainer's own test when it has one (`scalelab.rundir.config_differences`, which
    ignores keys a run may change on resume, such as `train.progress`), else exact equality."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return False
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if summary.get("status") != "completed" or not isinstance(summary.get("config"), dict):
        return False
    old, new = _normal(summary["config"]), _normal(config)
    try:
        from scalelab.rundir import config_differences
    except ImportError:
        return old == new
    return not config_differences(old, new)


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


def _run_name(override_dirname: str) -> str:
    # the same rule as scalelab.train.run_name (registered there as the `run_name` resolver)
    return override_dirname.replace("/", "_") or "default"


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
        OmegaConf.register_new_resolver("run_name", _run_name)
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
    path = run_dir / ".hydra" / "overrides.yaml"
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
    plan = _read_json(sweep_dir / PLAN_FILE)
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
        if not ((run_dir / "summary.json").exists() or (run_dir / ".hydra").exists()):
            continue
        job = jobs.get(run_dir.name)
        if job is None:
            overrides = _run_overrides(run_dir) or []
            job = jobs.setdefault(run_dir.name, {"subdir": run_dir.name, "overrides": overrides,
                                                 "planned": False, "plan": None})
        job["exists"] = True

    cells = []
    for job in jobs.values():
        run_dir = sweep_dir / job["subdir"] if job.get("subdir") else None
        summary = _read_json(run_dir / "summary.json") if run_dir is not None and run_dir.is_dir() else None
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
                   f"  [{c['subdir']}]")
    for c in status["cells"]:
        if c["status"] == "missing":
            out.append(f"  missing: {' '.join(c['overrides'])}  [{c['subdir']}]")
    return "\n".join(out)

