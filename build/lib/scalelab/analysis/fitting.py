"""``fit``: one entry point for every approach, with allocation, hold-out and bootstrap."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .approach1 import fit_approach1
from .approach2 import fit_approach2
from .approach3 import fit_approach3, start_grid
from .bootstrap import intervals, percentile_interval, run_bootstrap
from .budgets import default_budgets, parse_budgets
from .errors import AnalysisError, AnalysisWarning
from .kaplan import fit_kaplan
from .result import FitResult
from .table import load_table, split_curves
from .threads import blas_single_threaded

FITTERS = {"kaplan": fit_kaplan, "1": fit_approach1, "2": fit_approach2, "3": fit_approach3}
OPTIONS = {
    "3": {"n_starts", "starts", "delta", "k", "n_polish", "best_rtol", "max_iter", "bootstrap_starts"},
    "2": {"tolerance", "window"},
    "1": {"n_grid", "loss_column", "smooth"},
    "kaplan": set(),
}
DEFAULT_BOOTSTRAP_STARTS = 32


def normalize_approach(approach) -> str:
    """'kaplan', '1', '2' or '3' from the spellings users type (3, 'approach3', 'Kaplan')."""
    text = str(approach).strip().lower().replace("approach", "").replace("_", "").replace(" ", "")
    if text in FITTERS:
        return text
    raise AnalysisError(f"unknown approach {approach!r}: choose kaplan, 1, 2 or 3")


def _check_options(approach: str, options: dict) -> None:
    known = set().union(*OPTIONS.values())
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"fit() got unknown option(s): {', '.join(unknown)}")
    unused = sorted(set(options) - OPTIONS[approach] - {"bootstrap_starts"})
    if unused:
        warnings.warn(f"option(s) {', '.join(unused)} do not apply to approach {approach} and are ignored",
                      AnalysisWarning, stacklevel=3)


def split_holdout(table: pd.DataFrame, holdout_top: int):
    """(runs to fit on, the ``holdout_top`` runs with the most FLOPs)."""
    if not holdout_top:
        return table, table.iloc[0:0]
    if holdout_top < 0 or holdout_top >= len(table):
        raise AnalysisError(f"--holdout-top must be between 1 and {len(table) - 1} for a table of "
                            f"{len(table)} runs, got {holdout_top}")
    order = table["flops"].sort_values(ascending=False, kind="stable").index
    held = table.loc[order[:holdout_top]]
    return table.drop(index=held.index), held


def _fit_once(approach, table, curves, seed, options) -> FitResult:
    fitter = FITTERS[approach]
    kwargs = {k: v for k, v in options.items() if k in OPTIONS[approach] and k != "bootstrap_starts"}
    if approach == "1":
        kwargs["curves"] = curves
    if approach == "3":
        kwargs["seed"] = seed
    return fitter(table, **kwargs)


def allocation_rows(result: FitResult, budgets) -> list[dict]:
    """N_opt, D_opt, tokens per parameter and compute-optimal loss at each budget."""
    rows = []
    for c in budgets:
        n_opt, d_opt = float(result.n_opt(c)), float(result.d_opt(c))
        rows.append({"budget": float(c), "N_opt": n_opt, "D_opt": d_opt,
                     "tokens_per_param": d_opt / n_opt, "loss_opt": float(result.loss_opt(c))})
    return rows


def holdout_rows(result: FitResult, held: pd.DataFrame) -> list[dict]:
    """Predicted vs actual loss for each held-out run."""
    predicted = np.atleast_1d(result.predict_loss(held["params"], held["tokens"], held["flops"]))
    rows = []
    for (_, run), pred in zip(held.iterrows(), predicted, strict=True):
        row = {k: run[k] for k in ("model", "run_dir") if k in held.columns and isinstance(run[k], str)}
        row.update(params=float(run["params"]), tokens=float(run["tokens"]), flops=float(run["flops"]),
                   loss=float(run["loss"]), predicted=float(pred),
                   rel_error=float((pred - run["loss"]) / run["loss"]))
        rows.append(row)
    return rows


def _bootstrap(result, approach, table, curves, resamples, seed, options, budgets) -> None:
    if approach == "3":
        best = np.array([result.details["log_params"][k] for k in ("a", "b", "e", "alpha", "beta")])
        n_extra = int(options.get("bootstrap_starts", DEFAULT_BOOTSTRAP_STARTS))

        def fit_once(sample, i):
            starts = np.vstack([best, start_grid(n_extra, seed + 1 + i)]) if n_extra else best[None, :]
            opts = dict(options, starts=starts)
            opts.setdefault("max_iter", 200)   # the full-data best start converges well within this
            return _fit_once(approach, sample, curves, seed, opts)
    else:
        def fit_once(sample, i):
            return _fit_once(approach, sample, curves, seed, options)

    fits, info = run_bootstrap(fit_once, table, resamples, seed)
    if approach == "3":
        info["starts_per_resample"] = f"the full-data best plus {options.get('bootstrap_starts', DEFAULT_BOOTSTRAP_STARTS)} grid starts"
    result.bootstrap = info
    result.samples = [f.summary() for f in fits]
    result.ci = intervals(result.samples)
    for row in result.allocation:
        c = row["budget"]
        for key, values in (("N_opt", [f.n_opt(c) for f in fits]), ("D_opt", [f.d_opt(c) for f in fits]),
                            ("loss_opt", [f.loss_opt(c) for f in fits])):
            row[f"{key}_ci"] = percentile_interval(values)
        row["tokens_per_param_ci"] = percentile_interval([f.d_opt(c) / f.n_opt(c) for f in fits])
    if info["failed"]:
        warnings.warn(f"bootstrap: {info['failed']} of {resamples} resamples failed to fit "
                      f"({'; '.join(info['failure_reasons'])})", AnalysisWarning, stacklevel=3)


@blas_single_threaded
def fit(table, approach="3", bootstrap: int = 0, budgets=None, seed: int = 0, holdout_top: int = 0,
        curves=None, **options) -> FitResult:
    """Fit a scaling law to a runs table (path or DataFrame).

    approach: 'kaplan', '1' (training-curve envelope), '2' (IsoFLOP parabolas) or
    '3' (parametric L(N, D)). bootstrap: number of resamples for 95% intervals.
    budgets: FLOP budgets for the allocation table (default: the table's budgets or a
    decade grid). holdout_top: fit without the K largest-compute runs and predict them.
    Options: approach 3: n_starts, starts, delta, k, n_polish, best_rtol, max_iter,
    bootstrap_starts; approach 2: tolerance, window; approach 1: n_grid, loss_column, smooth.
    Raises AnalysisError for bad or insufficient input; a fit that does not converge
    returns converged=False with the reason in ``message``.
    """
    approach = normalize_approach(approach)
    _check_options(approach, options)
    if int(bootstrap) < 0:
        raise AnalysisError(f"bootstrap must be 0 or a positive number of resamples, got {bootstrap}")
    table, curves = split_curves(load_table(table), curves)
    budgets = parse_budgets(budgets) or default_budgets(table)
    train, held = split_holdout(table, int(holdout_top or 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _fit_once(approach, train, curves, seed, options)
        except AnalysisError as exc:
            if len(held):
                raise AnalysisError(f"after holding out the {len(held)} largest-compute runs: {exc}") from exc
            raise
        if result.converged:
            result.allocation = allocation_rows(result, budgets)
            if len(held):
                result.holdout = holdout_rows(result, held)
                if approach != "3":
                    result.details["holdout_note"] = (
                        "predictions use the compute-optimal frontier L(C): a held-out run that is not "
                        "compute-optimal is expected to lie above it")
            if bootstrap:
                _bootstrap(result, approach, train, curves, int(bootstrap), seed, options, budgets)
    result.warnings = [str(w.message) for w in caught]
    for w in caught:   # pass them on to the caller as well
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result
