"""``report``: fit every approach the data supports, draw the figures, write report.md.

One input is one study. Several inputs are separate studies compared with the
first (``pool=True`` pools them into one study instead). Each approach is fitted
on all runs (with bootstrap intervals) and once more without the largest-compute
runs to measure prediction error. What cannot be fitted or drawn is listed with
the reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots
from .budgets import default_budgets, parse_budgets
from .compare import CompareResult, compare_fits
from .errors import AnalysisError
from .fitting import fit
from .inputs import load_many
from .kaplan import frontier_runs
from .markdown import allocation_table, exponent_ci, holdout_table, num, parameters_table, table, with_ci
from .result import APPROACH_NAMES, FitResult, json_safe
from .table import INCLUDED_STATUS, split_curves
from .threads import blas_single_threaded

ALL_APPROACHES = ("kaplan", "1", "2", "3")
COMPARE_PREFERENCE = ("3", "2", "1", "kaplan")
FIGURE_CAPTIONS = {
    "loss_vs_compute": "Final loss of every run vs training compute, coloured by model size; circled runs "
                       "form the frontier (lowest loss at that compute so far); lines are each approach's "
                       "fitted compute-optimal loss L(C).",
    "isoflop_profiles": "IsoFLOP profiles: loss vs model size at each compute budget, the parabola (in log N) "
                        "fitted near each minimum, and its vertex (star).",
    "optimal_allocation": "Compute-optimal parameters and tokens vs compute for each approach, with the points "
                          "each fit used and bootstrap 95% bands.",
    "approach3_residuals": "Relative residuals of the approach-3 law L(N, D) for every run.",
    "training_curves": "Training loss along each run vs compute spent so far, coloured by model size, with "
                       "approach 1's lower envelope.",
    "comparison": "Comparison of the studies: runs and fitted loss frontiers (left, labelled with the compute "
                  "multiplier), compute-optimal N and D (right).",
}


@dataclass
class Study:
    label: str
    table: pd.DataFrame
    curves: pd.DataFrame | None
    run_counts: dict
    fits: dict = field(default_factory=dict)       # approach -> FitResult
    errors: dict = field(default_factory=dict)     # approach -> why it was not fitted
    holdout: dict = field(default_factory=dict)    # approach -> FitResult or reason (str)
    holdout_k: int = 0


@dataclass
class ReportResult:
    report: Path
    figures: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    studies: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)


def _options(approach: str, n_starts, bootstrap_starts) -> dict:
    if approach != "3":
        return {}
    options = {}
    if n_starts is not None:
        options["n_starts"] = n_starts
    if bootstrap_starts is not None:
        options["bootstrap_starts"] = bootstrap_starts
    return options


def analyse(table_with_attrs: pd.DataFrame, label: str, approaches, bootstrap: int, holdout_top, budgets,
            seed: int, n_starts=None, bootstrap_starts=None) -> Study:
    """Fit each approach on one study's runs, plus the held-out check."""
    table, curves = split_curves(table_with_attrs)
    counts = table_with_attrs.attrs.get("run_counts") or {INCLUDED_STATUS: len(table)}
    study = Study(label=label, table=table, curves=curves, run_counts=counts)
    study.holdout_k = (max(1, len(table) // 10) if holdout_top is None else int(holdout_top))
    data = table.copy()
    if curves is not None:
        data.attrs["curves"] = curves
    for approach in approaches:
        options = _options(approach, n_starts, bootstrap_starts)
        try:
            study.fits[approach] = fit(data, approach, bootstrap=bootstrap, budgets=budgets, seed=seed, **options)
        except AnalysisError as exc:
            study.errors[approach] = str(exc)
            continue
        if study.holdout_k and study.fits[approach].converged:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    study.holdout[approach] = fit(data, approach, budgets=budgets, seed=seed,
                                                  holdout_top=study.holdout_k,
                                                  **{k: v for k, v in options.items() if k == "n_starts"})
            except AnalysisError as exc:
                study.holdout[approach] = str(exc)
    return study


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
           seed: int = 0, pool: bool = False, n_starts=None, bootstrap_starts=None) -> ReportResult:
    """Write figures (PNG + SVG), fits.json and report.md into ``out_dir``.

    inputs: sweep directories, table files or DataFrames (one or several).
    holdout_top: runs held out for the prediction check (default: a tenth of the runs, at least 1; 0: none).
    n_starts / bootstrap_starts: approach-3 starts for the main fit / each bootstrap resample.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    approaches = tuple(str(a).lower() for a in approaches)
    budgets = parse_budgets(budgets)
    loaded = load_many(inputs, pool=pool)
    if budgets is None and len(loaded) > 1:
        budgets = sorted(set().union(*(default_budgets(t) for t, _ in loaded)))
    studies = [analyse(t, label, approaches, bootstrap, holdout_top, budgets, seed, n_starts, bootstrap_starts)
               for t, label in loaded]
    result = ReportResult(report=out_dir / "report.md", studies=studies)
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
    (out_dir / "fits.json").write_text(json.dumps(json_safe({
        s.label: {a: f.to_dict() for a, f in s.fits.items()} for s in studies}), indent=1))
    result.report.write_text(_markdown(studies, figures, comparison_figures, result, bootstrap))
    return result


def _compare_studies(base: Study, other: Study, budgets) -> CompareResult | str:
    for approach in COMPARE_PREFERENCE:
        fa, fb = base.fits.get(approach), other.fits.get(approach)
        if fa is not None and fb is not None and fa.converged and fb.converged:
            return compare_fits(fa, fb, (base.label, other.label), budgets)
    return f"no approach converged for both {base.label} and {other.label}"


# ---------------------------------------------------------------- markdown

def _markdown(studies, figures, comparison_figures, result: ReportResult, bootstrap: int) -> str:
    title = " vs ".join(s.label for s in studies)
    out = [f"# Scaling-law report: {title}", "",
           f"Written by `scalelab.analysis` on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}. "
           "It fits how loss scales with model size N, data D and compute C, and what split of a compute "
           "budget between N and D minimises loss, with up to four methods: Kaplan et al. (2020) and the three "
           "approaches of Hoffmann et al. (2022, 'Chinchilla'). Agreement between methods is evidence that the "
           "allocation is robust; disagreement points at a bias in one of them. "
           f"Values in brackets are bootstrap percentile 95% intervals from {bootstrap} resamples of the runs"
           f"{'' if bootstrap else ' (none were requested, so no intervals are shown)'}.", ""]
    out += _conventions_section(studies)
    for study in studies:
        out += [f"## Study: {study.label}" if len(studies) > 1 else "## Results", ""]
        out += _study_section(study, figures.get(study.label, []), result)
    if comparison_figures or result.comparisons:
        out += _comparison_section(result.comparisons, comparison_figures)
    out += ["## Figures not drawn", ""]
    if result.skipped:
        out += [f"- `{name}`: {reason}" for name, reason in result.skipped.items()]
    else:
        out += ["All figures were drawn."]
    out.append("")
    return "\n".join(out)


def _conventions_section(studies) -> list[str]:
    lines = ["## Conventions", ""]
    base = None
    for study in studies:
        for fitted in study.fits.values():
            base = fitted.conventions
            break
        if base:
            break
    base = base or {}
    for key in ("N", "D", "C", "loss"):
        if key in base:
            lines.append(f"- {base[key]}")
    for study in studies:
        f3 = study.fits.get("3")
        if f3 is not None and "C = kND" in f3.conventions:
            lines.append(f"- Approach 3 compute-optimal allocation ({study.label}): {f3.conventions['C = kND']}")
        f1 = study.fits.get("1")
        if f1 is not None and "curves" in f1.conventions:
            lines.append(f"- Approach 1 ({study.label}): {f1.conventions['curves']}")
    lines += ["- Compute-optimal exponents: N_opt = G*C^a, D_opt = H*C^b; tokens/param = D_opt/N_opt.", ""]
    return lines


def _study_section(study: Study, figures, result: ReportResult) -> list[str]:
    lines = ["### Runs", ""]
    included = study.run_counts.get(INCLUDED_STATUS, len(study.table))
    rows = [[status, str(n), "included" if status == INCLUDED_STATUS else "excluded"]
            for status, n in sorted(study.run_counts.items(), key=lambda item: item[0] != INCLUDED_STATUS)]
    lines += [table(["status", "runs", "in the fits"], rows), "",
              f"{included} runs are fitted: N from {num(study.table['params'].min())} to "
              f"{num(study.table['params'].max())}, D from {num(study.table['tokens'].min())} to "
              f"{num(study.table['tokens'].max())}, C from {num(study.table['flops'].min())} to "
              f"{num(study.table['flops'].max())} FLOPs.", ""]
    lines += ["### Summary", ""]
    summary_rows = []
    for approach in ALL_APPROACHES:
        if approach in study.fits:
            f = study.fits[approach]
            if f.converged:
                summary_rows.append([APPROACH_NAMES[approach], exponent_ci(f.a, f.ci.get("a")),
                                     exponent_ci(f.b, f.ci.get("b")), _holdout_summary(study, approach)])
            else:
                summary_rows.append([APPROACH_NAMES[approach], "did not converge", f.message, ""])
        elif approach in study.errors:
            summary_rows.append([APPROACH_NAMES[approach], "not fitted", study.errors[approach], ""])
    lines += [table(["approach", "a (N_opt ~ C^a)", "b (D_opt ~ C^b)", "held-out mean abs. error"],
                    summary_rows), ""]
    for approach in ALL_APPROACHES:
        if approach in study.fits:
            lines += _approach_section(study, approach)
    if figures:
        lines += ["### Figures", ""]
        for key, png in figures:
            lines += [f"![{key}]({png})", "", f"*{FIGURE_CAPTIONS[key]}* (also `{png[:-4]}.svg`)", ""]
    return lines


def _holdout_summary(study: Study, approach: str) -> str:
    held = study.holdout.get(approach)
    if isinstance(held, FitResult) and held.converged and held.holdout:
        errors = [abs(r["rel_error"]) for r in held.holdout]
        return f"{100 * sum(errors) / len(errors):.2f}% over {len(errors)} runs"
    return "n/a"


def _approach_section(study: Study, approach: str) -> list[str]:
    f = study.fits[approach]
    lines = [f"### {APPROACH_NAMES[approach]}", ""]
    if not f.converged:
        return lines + [f"**The fit did not converge**: {f.message}. No numbers are reported.", ""]
    lines += [parameters_table(f), ""]
    if approach == "3":
        d = f.details
        lines += [f"Objective (sum of Huber losses, delta = {d['huber_delta']:g}): {d['objective']:.6g}, the best "
                  f"of {d['n_starts']} L-BFGS starts; {d['n_reached_best']} starts reached it "
                  f"({d['best_tolerance']}).", ""]
    if approach == "2":
        d = f.details
        lines += [f"Budgets from {d['budgets_from']}; {len(d['minima'])} used, "
                  f"{len(d['dropped_budgets'])} dropped; parabola window {d['window']} sizes.", ""]
        for drop in d["dropped_budgets"]:
            lines.append(f"- dropped budget {num(drop['budget'])}: {drop['reason']}")
        if d["dropped_budgets"]:
            lines.append("")
    if approach == "kaplan":
        d = f.details
        points = ", ".join(f"{law}: {n} points" for law, n in d["points"].items())
        lines += [f"Each law is fitted on its lower envelope ({points}). The exponents a and b above are "
                  "power laws of N and D through the runs on the loss-vs-FLOPs frontier; Kaplan's own "
                  f"derivation from the fitted laws gives a = alpha_C/alpha_N = {d['a_from_alphas']:.4f} and "
                  f"b = alpha_C/alpha_D = {d['b_from_alphas']:.4f}.", ""]
    lines += ["Compute-optimal allocation:", "", allocation_table(f), ""]
    held = study.holdout.get(approach)
    if isinstance(held, FitResult) and held.converged and held.holdout:
        lines += [f"Held-out prediction: fitted without the {study.holdout_k} largest-compute runs, then "
                  "predicted them" + (" (with the frontier L(C), the best loss reachable at that compute)"
                                      if approach != "3" else " (with L(N, D))") + ":", "",
                  holdout_table(held), ""]
    elif isinstance(held, str):
        lines += [f"Held-out prediction not possible: {held}", ""]
    if f.bootstrap:
        b = f.bootstrap
        lines += [f"Bootstrap: {b['succeeded']} of {b['requested']} resamples fitted, {b['failed']} failed"
                  + (f" ({'; '.join(f'{n}x {r}' for r, n in b['failure_reasons'].items())})" if b["failed"] else "")
                  + ".", ""]
    notes = [w for w in f.warnings if "bootstrap:" not in w]
    if notes:
        lines += ["Notes:", ""] + [f"- {w}" for w in dict.fromkeys(notes)] + [""]
    return lines


def _comparison_section(comparisons, comparison_figures) -> list[str]:
    lines = ["## Comparison", ""]
    for cmp in comparisons:
        a, b = cmp.names
        lines += [f"### {b} vs {a} ({APPROACH_NAMES[cmp.approach]})", ""]
        if not cmp.converged:
            lines += [f"Not compared: {cmp.message}", ""]
            continue
        rows = [[key, exponent_ci(e[a], e.get("ci_" + a)), exponent_ci(e[b], e.get("ci_" + b)),
                 exponent_ci(e["difference"], e.get("ci"))] for key, e in cmp.differences.items()]
        lines += [table(["exponent", a, b, f"{b} - {a}"], rows), ""]
        rows = [[num(r["budget"]), num(r[f"loss_{a}"], 4), num(r[f"loss_{b}"], 4),
                 with_ci(r["multiplier"], r.get("ci"))] for r in cmp.multipliers]
        lines += [table(["C (FLOPs)", f"loss {a}", f"loss {b}", f"compute multiplier of {b}"], rows), ""]
        lines += [f"- {n}" for n in cmp.notes] + [""]
    for _cmp, png in comparison_figures:
        lines += [f"![comparison]({png})", "", f"*{FIGURE_CAPTIONS['comparison']}*", ""]
    return lines
