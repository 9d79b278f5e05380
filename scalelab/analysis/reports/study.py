"""``report``: fit every approach the data supports, draw the figures, write report.md.

One input is one study. Several inputs are separate studies compared with the
first (``pool=True`` pools them into one study instead). Each approach is fitted
on all runs (with bootstrap intervals) and once more without the largest budget
to predict that budget's best run. Each fit is marked determined or not (with
the reason), and report.md opens with the verdict (``agreement``). Files:
report.md, fits.json (per study and approach: the fit, its status and hold-out
rows; approaches that could not be fitted appear with their reason),
verdict.json (``verdict.read_verdict``), runs.csv (the runs the fits used, with
the hyperparameter columns of ``collect``, to filter and plot further) and the
figures as PNG, SVG and PDF. What cannot be fitted or drawn is listed with the
reason.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from scalelab.analysis.decide.compare import CompareResult, compare_fits
from scalelab.analysis.decide.rung import PLAN, read_plan, rung_table, verify_dir
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.approaches import fit
from scalelab.analysis.fitting.kaplan import frontier_runs
from scalelab.analysis.reports import plots
from scalelab.analysis.reports.agreement import build_verdict
from scalelab.analysis.reports.document import render
from scalelab.analysis.reports.rung_plots import rung_figure
from scalelab.analysis.result import json_safe
from scalelab.analysis.runs.budgets import default_budgets, parse_budgets
from scalelab.analysis.runs.inputs import load_many
from scalelab.analysis.runs.table import INCLUDED_STATUS, split_curves, write_table
from scalelab.analysis.threads import blas_single_threaded
from scalelab.analysis.verdict import Verdict, not_fitted

ALL_APPROACHES = ("kaplan", "1", "2", "3")
COMPARE_PREFERENCE = ("3", "2", "1", "kaplan")
@dataclass
class Study:
    label: str
    table: pd.DataFrame
    curves: pd.DataFrame | None
    run_counts: dict
    fits: dict = field(default_factory=dict)       # approach -> FitResult
    errors: dict = field(default_factory=dict)     # approach -> why it was not fitted
    holdout: dict = field(default_factory=dict)    # approach -> FitResult or reason (str)
    holdout_k: int | None = None                   # None: the largest budget; 0: none; K: the top-K runs
    holdout_info: dict = field(default_factory=dict)
    verdict: Verdict | None = None
    rung_table: pd.DataFrame | None = None         # a trained prediction rung's runs (report --rung)

    def all_fits(self) -> dict:
        """Every requested approach: its fit, or a not-determined placeholder with the reason."""
        out = dict(self.fits)
        out.update({a: not_fitted(a, reason) for a, reason in self.errors.items()})
        return {a: out[a] for a in ALL_APPROACHES if a in out}


@dataclass
class ReportResult:
    """What ``report`` wrote; ``verdict`` (the first study's) says per approach whether it is determined."""

    report: Path
    runs: Path | None = None                       # runs.csv
    figures: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    studies: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    verdicts: dict = field(default_factory=dict)   # study label -> Verdict
    rung: dict | None = None                       # the verified prediction rung (`rung=`), fits.json's `rung`
    rung_figure: str | None = None
    tasks: list = field(default_factory=list)      # the task chains (runs with task metrics), fits.json's `tasks`

    @property
    def verdict(self) -> Verdict | None:
        return next(iter(self.verdicts.values()), None)


def _options(approach: str, n_starts, bootstrap_starts, delta=None, law=None) -> dict:
    if approach != "3":
        return {}
    options = {} if delta is None else {"delta": delta}
    if law is not None:
        options["law"] = law
    if n_starts is not None:
        options["n_starts"] = n_starts
    if bootstrap_starts is not None:
        options["bootstrap_starts"] = bootstrap_starts
    return options


def analyse(table_with_attrs: pd.DataFrame, label: str, approaches, bootstrap: int, holdout_top, budgets,
            seed: int, n_starts=None, bootstrap_starts=None, delta=None, law=None) -> Study:
    """Fit each approach on one study's runs, plus the held-out check, and build the verdict."""
    table, curves = split_curves(table_with_attrs)
    counts = table_with_attrs.attrs.get("run_counts") or {INCLUDED_STATUS: len(table)}
    study = Study(label=label, table=table, curves=curves, run_counts=counts,
                  holdout_k=None if holdout_top is None else int(holdout_top))
    data = table.copy()
    if curves is not None:
        data.attrs["curves"] = curves
    for approach in approaches:
        options = _options(approach, n_starts, bootstrap_starts, delta, law)
        try:
            study.fits[approach] = fit(data, approach, bootstrap=bootstrap, budgets=budgets, seed=seed, **options)
        except AnalysisError as exc:
            study.errors[approach] = str(exc)
            continue
        if study.holdout_k != 0 and study.fits[approach].converged:
            _holdout(study, data, approach, budgets, seed, options, bootstrap)
    study.verdict = build_verdict(label, study.all_fits(), study.holdout_info)
    return study


def _holdout(study: Study, data, approach: str, budgets, seed: int, options: dict, bootstrap: int = 0) -> None:
    """Refit without the largest budget (or the top-K runs); its rows go on the main fit. Approach 3's
    refit is bootstrapped too, so that each held-out row says whether it lies inside the prediction
    interval of the law fitted without it."""
    how = {"holdout_budget": True} if study.holdout_k is None else {"holdout_top": study.holdout_k}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            held = fit(data, approach, budgets=budgets, seed=seed, **how,
                       bootstrap=bootstrap if approach == "3" else 0,
                       **{k: v for k, v in options.items() if k in ("n_starts", "delta", "bootstrap_starts", "law")})
    except AnalysisError as exc:
        study.holdout[approach] = str(exc)
        study.holdout_info.setdefault("reason", f"{approach}: {exc}")
        return
    study.holdout[approach] = held
    main = study.fits[approach]
    main.holdout = held.holdout
    main.details["holdout_fit"] = {"a": held.a, "b": held.b, "status": held.status, "reason": held.reason,
                                   "n_runs": held.n_runs, **held.details.get("holdout", {})}
    if held.details.get("holdout"):
        study.holdout_info.update({k: v for k, v in held.details["holdout"].items() if k != "reason"})


def _write_runs(studies: list[Study], out_dir: Path) -> Path:
    """runs.csv: every study's runs in one table (with a `study` column when there are several)."""
    parts = []
    for study in studies:
        part = study.table.copy()
        if len(studies) > 1:
            part.insert(0, "study", study.label)
        parts.append(part)
    runs = pd.concat(parts, ignore_index=True)
    runs.attrs = {}  # the curves stay out: runs.csv is the table to filter, one row per run
    return write_table(runs, out_dir / "runs.csv")[0]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "study"


def _draw(name, build, out_dir, result: ReportResult, prefix: str = "") -> str | None:
    """Build and save one figure; record it or the reason it was skipped. Returns the PNG name."""
    full = f"{prefix}{name}"
    try:
        fig = build()
    except (AnalysisError, KeyError, ValueError) as exc:
        result.skipped[full] = f"could not be drawn: {exc}"
        return None
    paths = plots.save(fig, out_dir, full)
    result.figures.extend(paths)
    return paths[0].name


def _study_figures(study: Study, out_dir: Path, result: ReportResult, prefix: str) -> list[tuple[str, str]]:
    """Draw the study's figures; returns [(figure key, png name)] for the ones made."""
    made = []
    converged = {a: f for a, f in study.fits.items() if f.converged}

    def add(name, build, reason_missing=None):
        if reason_missing:
            result.skipped[prefix + name] = reason_missing
            return
        png = _draw(name, build, out_dir, result, prefix)
        if png:
            made.append((name, png))

    add("loss_vs_compute", lambda: plots.loss_vs_compute(study.table, converged, frontier_runs(study.table)))
    add("isoflop_profiles", lambda: plots.isoflop_profiles(study.table, converged["2"]),
        None if "2" in converged else f"no approach-2 fit: {_why(study, '2')}")
    add("optimal_allocation", lambda: plots.optimal_allocation(converged, study.table["flops"]),
        None if converged else "no fit converged")
    add("approach3_residuals", lambda: plots.approach3_residuals(study.table, converged["3"]),
        None if "3" in converged else f"no approach-3 fit: {_why(study, '3')}")
    has_curves = study.curves is not None and len(study.curves) > 0
    add("training_curves", lambda: plots.training_curves(study.table, study.curves, converged.get("1")),
        None if has_curves and "run_dir" in study.table.columns
        else "no training curves (collect from run directories, or put <table>.curves.csv beside the table)")
    return made


def _why(study: Study, approach: str) -> str:
    if approach in study.errors:
        return study.errors[approach]
    if approach in study.fits:
        return study.fits[approach].message or "did not converge"
    return "not requested"


@blas_single_threaded
def report(inputs, out_dir, approaches=ALL_APPROACHES, bootstrap: int = 100, holdout_top=None, budgets=None,
           seed: int = 0, pool: bool = False, n_starts=None, bootstrap_starts=None,
           delta=None, law=None, rung=None) -> ReportResult:
    """Write figures (PNG, SVG, PDF), fits.json, verdict.json, runs.csv and report.md into ``out_dir``.

    inputs: sweep directories, table files or DataFrames (one or several).
    holdout_top: None (default): fit without the largest budget and predict its best run; K > 0: hold
    out the K largest-compute runs instead; 0: no held-out check.
    n_starts / bootstrap_starts: approach-3 starts for the main fit / each bootstrap resample.
    delta: approach 3's Huber delta (a number, or "auto"; default the published 1e-3).
    law: approach 3's law form (``fitting.fit``'s ``law``: a name, a file, or "auto"; default chinchilla).
    rung: a trained prediction rung's directory (``analyze rung -o``): its section, figure and fits.json rows
    (under the first study, or the one its plan names).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    approaches = tuple(str(a).lower() for a in approaches)
    budgets = parse_budgets(budgets)
    loaded = load_many(inputs, pool=pool)
    if budgets is None and len(loaded) > 1:
        budgets = sorted(set().union(*(default_budgets(t) for t, _ in loaded)))
    studies = [analyse(t, label, approaches, bootstrap, holdout_top, budgets, seed, n_starts, bootstrap_starts,
                       delta, law)
               for t, label in loaded]
    result = ReportResult(report=out_dir / "report.md", studies=studies, runs=_write_runs(studies, out_dir))
    figures = {}
    for study in studies:
        prefix = f"{_slug(study.label)}_" if len(studies) > 1 else ""
        figures[study.label] = _study_figures(study, out_dir, result, prefix)
    comparison_figures = []
    if len(studies) > 1:
        for other in studies[1:]:
            cmp = _compare_studies(studies[0], other, budgets or default_budgets(studies[0].table))
            if isinstance(cmp, str):
                result.skipped[f"comparison_{_slug(other.label)}"] = cmp
                continue
            result.comparisons.append(cmp)
            png = _draw(f"comparison_{_slug(other.label)}",
                        lambda cmp=cmp, other=other: plots.comparison(cmp, [studies[0].table, other.table]),
                        out_dir, result)
            if png:
                comparison_figures.append((cmp, png))
    else:
        result.skipped["comparison"] = "only one study: give two or more inputs to compare them"
    result.verdicts = {s.label: s.verdict for s in studies}
    fits = {s.label: {a: f.to_dict() for a, f in s.all_fits().items()} for s in studies}
    if rung is not None:
        _add_rung(rung, studies, out_dir, result)
        fits[result.rung["study"]]["rung"] = result.rung
    _add_tasks(studies[0], out_dir, result, bootstrap, seed)
    if result.tasks:
        fits[studies[0].label]["tasks"] = result.tasks
    (out_dir / "fits.json").write_text(json.dumps(json_safe(fits), indent=1))
    (out_dir / "verdict.json").write_text(json.dumps(json_safe({
        s.label: s.verdict.to_dict() for s in studies}), indent=1))
    result.report.write_text(render(studies, figures, comparison_figures, result, bootstrap))
    return result


def _add_rung(rung_dir, studies: list[Study], out_dir: Path, result: ReportResult) -> None:
    """Verify the rung against the predictions its plan made, attach it to its study, draw its figure."""
    plan = read_plan(rung_dir)
    labels = [s.label for s in studies]
    study = studies[labels.index(plan["study"])] if plan.get("study") in labels else studies[0]
    study.rung_table = rung_table(rung_dir)  # the task chains are checked on it too (_add_tasks)
    result.rung = {"study": study.label, "source": str(Path(rung_dir) / PLAN),
                   "weighting": (plan.get("rival_forms") or {}).get("weighting"),
                   **verify_dir(rung_dir, plan=plan, table=study.rung_table)}
    result.rung_figure = _draw("rung", lambda: rung_figure(study.table, plan, result.rung), out_dir, result)


def _add_tasks(study: Study, out_dir: Path, result: ReportResult, bootstrap: int, seed: int) -> None:
    """The two-step chain of every task the study's runs were scored on: fitted, checked on the largest
    budget held out, drawn (scalelab/analysis/tasks/chain.py)."""
    from scalelab.analysis.reports.task_plots import task_figure
    from scalelab.analysis.tasks.chain import check_at, fit_chain, holdout_chain, task_names

    rung = study.rung_table
    for name in task_names(study.table):
        options = {"bootstrap": min(bootstrap, 100), "seed": seed}  # items: the runs' task/NAME/items
        try:
            chain = fit_chain(study.table, name, **options)
        except AnalysisError as exc:
            result.tasks.append({"task": name, "determined": False, "reason": str(exc)})
            continue
        try:
            chain.holdout = holdout_chain(study.table, name, **options)
        except AnalysisError as exc:
            chain.holdout = {"failed": str(exc)}
        entry = chain.to_dict()
        if rung is not None and name in task_names(rung):  # the rung's sizes, predicted by the study's chain
            entry["rung"] = check_at(chain, rung)
            result.rung.setdefault("tasks", []).append({"task": name, "determined": chain.determined,
                                                        "sizes": entry["rung"]})
        held = chain.holdout if "failed" not in chain.holdout else None
        entry["figure"] = _draw(f"task_{name}", lambda chain=chain, held=held: task_figure(study.table, chain, held),
                                out_dir, result)
        result.tasks.append(entry)


def _compare_studies(base: Study, other: Study, budgets) -> CompareResult | str:
    """Compare with the first approach determined in both (else the first that converged in both)."""
    for test in (lambda f: f.determined, lambda f: f.converged):
        for approach in COMPARE_PREFERENCE:
            fa, fb = base.fits.get(approach), other.fits.get(approach)
            if fa is not None and fb is not None and test(fa) and test(fb):
                return compare_fits(fa, fb, (base.label, other.label), budgets)
    return f"no approach converged for both {base.label} and {other.label}"
