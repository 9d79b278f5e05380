"""``fit``: one entry point for every approach, with allocation, hold-out, bootstrap and status.

Every approach sees the same N (``params``) and C (``flops``): approaches 2 and
3 get the study's FLOPs-per-token model f(N), measured once from the whole
table, so that D_opt = C / f(N_opt) everywhere.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from scalelab.analysis.bootstrap import bca_interval, intervals, run_bootstrap, run_jackknife
from scalelab.analysis.errors import AnalysisError, AnalysisWarning
from scalelab.analysis.fitting.approach1 import fit_approach1
from scalelab.analysis.fitting.approach2 import DEFAULT_WINDOW, fit_approach2, parabola_residuals
from scalelab.analysis.fitting.approach3 import auto_delta, fit_approach3, start_grid
from scalelab.analysis.fitting.forms import BUILTIN, parse_fix, with_fixed
from scalelab.analysis.fitting.kaplan import fit_kaplan
from scalelab.analysis.fitting.law_files import resolve_law
from scalelab.analysis.fitting.law_fit import bootstrap_law, fit_law
from scalelab.analysis.fitting.predict import fit_quality, log_residuals, mark_intervals
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.budgets import DEFAULT_TOLERANCE, assign_budgets, default_budgets, parse_budgets
from scalelab.analysis.runs.flops_model import flops_per_token_model
from scalelab.analysis.runs.table import load_table, split_curves
from scalelab.analysis.threads import blas_single_threaded
from scalelab.analysis.verdict import mark

FITTERS = {"kaplan": fit_kaplan, "1": fit_approach1, "2": fit_approach2, "3": fit_approach3}
OPTIONS = {
    "3": {"n_starts", "starts", "delta", "k", "n_polish", "best_rtol", "max_iter", "bootstrap_starts", "law", "fix",
          "jackknife"},
    "2": {"tolerance", "window"},
    "1": {"n_grid", "loss_column", "smooth"},
    "kaplan": set(),
}
INTERNAL = {"2": {"fpt"}, "3": {"fpt", "flops_range"}}   # passed by fit itself, not by users
DEFAULT_BOOTSTRAP_STARTS = 32
# law="auto" (approach 3) chooses between these by AIC: Chinchilla's separable form, Kaplan's coupled one,
# and Kaplan's over an irreducible loss (which a study's runs may or may not support)
AUTO_LAWS = ("chinchilla", "kaplan", "kaplan-e")


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


def split_largest_budget(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE):
    """(runs of every other budget, the best (lowest mean loss) point of the largest budget, info).

    Budgets come from the ``budget`` column or from grouping runs by FLOPs.
    """
    budget, source = assign_budgets(table, tolerance)
    values = budget.dropna().unique()
    if len(values) < 2:
        raise AnalysisError(f"the held-out check needs at least 2 budgets, found {len(values)} ({source})")
    largest = float(values.max())
    members = budget.to_numpy(dtype=float) == largest
    best, n_seeds = best_point(table[members])
    what = ("the lowest-loss run of the largest budget" if n_seeds == 1 else
            f"the largest budget's lowest-loss point, the mean of its {n_seeds} runs (seeds)")
    info = {"kind": "largest budget", "budget": largest, "n_held_out": int(members.sum()),
            "predicted_run": what, "n_repeats": n_seeds, "budgets_from": source}
    return table[~members], best, info


def best_point(runs: pd.DataFrame):
    """(one-row table of the lowest mean loss over runs that share N and D, how many runs it averages).

    With several seeds per point the lowest single run is biased low (the minimum of noisy draws);
    the mean of the best point's runs is the target a fitted law can be held to.
    """
    keys = runs[["params", "tokens"]].round(6)
    mean = runs.groupby([keys["params"], keys["tokens"]], sort=False)["loss"].transform("mean")
    best = runs.loc[[mean.idxmin()]].copy()
    same = (keys["params"] == keys.loc[best.index[0], "params"]) & (keys["tokens"] == keys.loc[best.index[0], "tokens"])
    best["loss"] = float(mean.min())
    return best, int(same.sum())


def _fit_once(approach, table, curves, seed, options) -> FitResult:
    fitter = FITTERS[approach]
    kwargs = {k: v for k, v in options.items() if k in OPTIONS[approach] | INTERNAL.get(approach, set())
              and k not in ("bootstrap_starts", "law", "fix")}
    if approach == "3" and "law" in options:
        return fit_law(table, options["law"], fixed=options.get("fix"), seed=seed, **kwargs)
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
    """Predicted vs actual loss for each held-out run.

    Approach 3 predicts the run itself, L(N, D); the others predict the
    compute-optimal loss L(C) at its C (``frontier_predicted`` for approach 3).
    """
    predicted = np.atleast_1d(result.predict_table(held))
    frontier = np.atleast_1d(result.loss_opt(held["flops"].to_numpy(dtype=float)))
    rows = []
    for (_, run), pred, front in zip(held.iterrows(), predicted, frontier, strict=True):
        row = {k: run[k] for k in ("model", "run_dir") if k in held.columns and isinstance(run[k], str)}
        row.update(params=float(run["params"]), tokens=float(run["tokens"]), flops=float(run["flops"]),
                   loss=float(run["loss"]), predicted=float(pred),
                   rel_error=float((pred - run["loss"]) / run["loss"]),
                   predicts="L(N, D) of the run" if result.approach == "3" else "frontier L(C) at its C")
        if result.approach == "3":
            row.update(frontier_predicted=float(front), frontier_rel_error=float((front - run["loss"]) / run["loss"]))
        rows.append(row)
    return rows


def _fit_function(approach, result, curves, seed, options):
    """fit_once(sample, i) for the bootstrap and the jackknife."""
    if approach != "3":
        return lambda sample, i: _fit_once(approach, sample, curves, seed, options)
    best = np.array([result.details["log_params"][k] for k in ("a", "b", "e", "alpha", "beta")])
    n_extra = int(options.get("bootstrap_starts", DEFAULT_BOOTSTRAP_STARTS))
    flops_range = result.details.get("allocation_range")

    def fit_once(sample, i):
        starts = np.vstack([best, start_grid(n_extra, seed + 1 + i)]) if n_extra else best[None, :]
        opts = dict(options, starts=starts, flops_range=flops_range)
        opts.setdefault("max_iter", 200)   # the full-data best start converges well within this
        return _fit_once(approach, sample, curves, seed, opts)
    return fit_once


def _resampler(approach, table, options):
    """(resampler or None for runs with replacement, method description).

    Approach 2 resamples residuals: each resample is every budget's fitted
    parabola at the runs it was fitted to, times (1 + a residual drawn from the
    pooled residuals). Runs outside the parabolas' windows are left out of the
    resamples: given their observed losses next to smoothed ones, the refit
    would pick other windows and shift every vertex by the parabolas' bias.
    """
    if approach != "2":
        return None, "runs resampled with replacement"
    smooth, mask, residuals, dof = parabola_residuals(
        table, options.get("tolerance", DEFAULT_TOLERANCE), options.get("window", DEFAULT_WINDOW))
    if dof == 0:
        return None, "runs resampled with replacement (no parabola has residual degrees of freedom)"

    def resample(sample, rng):
        out = sample[mask].copy()
        out["loss"] = smooth[mask] * (1.0 + rng.choice(residuals, size=int(mask.sum()), replace=True))
        return out
    return resample, (f"residual bootstrap within budgets: each used budget's parabola at the runs it was "
                      f"fitted to, plus relative residuals drawn from the {len(residuals)} pooled residuals "
                      f"({dof} degrees of freedom), so every resample keeps the sizes each parabola was fitted to")


def _bootstrap(result, approach, table, curves, resamples, seed, options) -> None:
    if "law" in options:   # law forms refit every resample in one batch
        fits, jackknife, info = bootstrap_law(result, options["law"], table, resamples, seed,
                                              dict(options, seed=seed))
    else:
        fit_once = _fit_function(approach, result, curves, seed, options)
        resampler, method = _resampler(approach, table, options)
        fits, info = run_bootstrap(fit_once, table, resamples, seed, resampler, method)
        jackknife = run_jackknife(fit_once, table, seed) if fits and options.get("jackknife", True) else []
    if approach == "3" and "law" not in options:
        extra = options.get("bootstrap_starts", DEFAULT_BOOTSTRAP_STARTS)
        info["starts_per_resample"] = f"the full-data best plus {extra} grid starts"
    info["jackknife_fits"] = len(jackknife)
    result.samples = [f.summary() for f in fits]
    if approach == "3":   # what `analyze predict` evaluates the law with
        info["param_samples"] = [f.params for f in fits]
    result.ci, methods = intervals(result.samples, result.summary(), [j.summary() for j in jackknife])
    info["interval_method"] = _method_summary(methods)
    result.bootstrap = info
    for row in result.allocation:
        c = row["budget"]
        for key in ("N_opt", "D_opt", "loss_opt", "tokens_per_param"):
            row[f"{key}_ci"], _ = bca_interval([_allocation_value(f, key, c) for f in fits], row[key],
                                               [_allocation_value(j, key, c) for j in jackknife])
    if info["failed"]:
        warnings.warn(f"bootstrap: {info['failed']} of {resamples} resamples failed to fit "
                      f"({'; '.join(info['failure_reasons'])})", AnalysisWarning, stacklevel=3)


def _allocation_value(result: FitResult, key: str, flops: float) -> float:
    if key == "tokens_per_param":
        return float(result.d_opt(flops) / result.n_opt(flops))
    return float({"N_opt": result.n_opt, "D_opt": result.d_opt, "loss_opt": result.loss_opt}[key](flops))


def _method_summary(methods: dict) -> dict:
    """The interval method of a and b (and any other key that fell back from BCa)."""
    main = {k: methods[k] for k in ("a", "b") if k in methods}
    fallbacks = {k: m for k, m in methods.items() if m != "BCa" and k not in main}
    return {"level": 0.95, "a_b": main, "fallbacks": fallbacks,
            "rule": "BCa with grouped delete-one jackknife acceleration; percentile where BCa is undefined"}


def _split(table, holdout_top: int, holdout_budget: bool, options):
    if holdout_budget:
        return split_largest_budget(table, options.get("tolerance", DEFAULT_TOLERANCE))
    train, held = split_holdout(table, int(holdout_top or 0))
    info = {"kind": "largest-compute runs", "n_held_out": len(held)} if len(held) else {}
    return train, held, info


@blas_single_threaded
def fit(table, approach="3", bootstrap: int = 0, budgets=None, seed: int = 0, holdout_top: int = 0,
        curves=None, holdout_budget: bool = False, **options) -> FitResult:
    """Fit a scaling law to a runs table (path or DataFrame).

    approach: 'kaplan', '1' (training-curve envelope), '2' (IsoFLOP parabolas) or
    '3' (parametric L(N, D)). bootstrap: number of resamples for 95% BCa intervals.
    budgets: FLOP budgets for the allocation table (default: the table's budgets or a
    decade grid). holdout_top: fit without the K largest-compute runs and predict them;
    holdout_budget: fit without the largest budget and predict its best run.
    Options: approach 3: n_starts, starts, delta, k, n_polish, best_rtol, max_iter,
    bootstrap_starts, jackknife (False: no delete-one refits, so BCa without acceleration),
    law (a built-in name of ``law_forms.BUILTIN``, a law file or a LawForm;
    default chinchilla, approach 3's own fitter), fix ({name: value} or "NAME=VALUE,..." pinned);
    approach 2: tolerance, window; approach 1: n_grid, loss_column, smooth.
    Approach-3 fits store ``details["log_residuals"]``, and with a bootstrap the resamples'
    parameters (``bootstrap["param_samples"]``) and, for held-out runs, their intervals (``predict``).
    Raises AnalysisError for bad or insufficient input; a fit that does not converge
    returns converged=False with the reason in ``message``. ``status`` says whether
    the fit is determined (``reason`` says why not).
    """
    approach = normalize_approach(approach)
    _check_options(approach, options)
    if int(bootstrap) < 0:
        raise AnalysisError(f"bootstrap must be 0 or a positive number of resamples, got {bootstrap}")
    table, curves = split_curves(load_table(table), curves)
    budgets = parse_budgets(budgets) or default_budgets(table)
    train, held, held_info = _split(table, holdout_top, holdout_budget, options)
    options, selection = _select_law(approach, table, train, seed, options)
    options = _shared_c(approach, table, _resolve_law(approach, options))
    options, delta_rule = _resolve_delta(approach, train, options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _fit_train(approach, train, curves, seed, options, held)
        if result.converged:
            result.allocation = allocation_rows(result, budgets) if result.allocates else []
            if len(held):
                result.holdout = holdout_rows(result, held)
                result.details["holdout"] = held_info
                if approach != "3":
                    result.details["holdout_note"] = (
                        "predictions use the compute-optimal frontier L(C): a held-out run that is not "
                        "compute-optimal is expected to lie above it")
            if approach == "3":
                result.details["log_residuals"] = log_residuals(result, train)
            if bootstrap:
                _bootstrap(result, approach, train, curves, int(bootstrap), seed, options)
                if len(held) and approach == "3":
                    mark_intervals(result, held, repeats=int(held_info.get("n_repeats") or 1))
    if delta_rule and result.details is not None:
        result.details["huber_delta_rule"] = delta_rule
    if selection and result.details is not None:
        result.details["law_selection"] = selection
    mark(result)
    result.warnings = [str(w.message) for w in caught]
    for w in caught:   # pass them on to the caller as well
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _resolve_delta(approach: str, train: pd.DataFrame, options: dict) -> tuple[dict, dict | None]:
    """``delta="auto"`` (approach 3) becomes a number, chosen once on the runs fitted, so that the
    main fit, its bootstrap resamples and its jackknife all use the same delta."""
    if approach != "3" or options.get("delta") != "auto":
        return options, None
    first = {k: v for k, v in options.items() if k in ("n_starts", "fpt", "flops_range", "k")}
    fitter = None
    if "law" in options:
        def fitter(table, **opts):
            return fit_law(table, options["law"], fixed=options.get("fix"), **opts)
    delta, rule = auto_delta(train, fitter, **first)
    return dict(options, delta=delta), rule


def _select_law(approach: str, table, train, seed: int, options: dict) -> tuple[dict, dict | None]:
    """``law="auto"``: fit each law of ``AUTO_LAWS`` to the runs fitted (never the held-out ones) and keep
    the one of lowest AIC, n*log(mean squared log residual) + 2*(free parameters); the bootstrap then
    resamples the chosen law (its intervals are conditional on the choice)."""
    if approach != "3" or options.get("law") != "auto":
        return options, None
    if options.get("fix"):
        raise AnalysisError("law auto chooses between laws with different parameters: pin them (fix) "
                            "with one named law instead")
    candidates = {name: _score_law(name, table, train, seed, options) for name in AUTO_LAWS}
    fitted = {k: v for k, v in candidates.items() if v["fitted"]}
    if not fitted:
        raise AnalysisError("law auto: no candidate law could be fitted (" + "; ".join(
            f"{k}: {v['reason']}" for k, v in candidates.items()) + ")")
    chosen = min(fitted, key=lambda k: fitted[k]["aic"])
    selection = {"chosen": chosen, "candidates": candidates, "n_runs": len(train),
                 "rule": "lowest AIC, n*log(mean squared log residual) + 2*(free parameters), over the runs "
                         "fitted (held-out runs never take part); intervals are conditional on the choice"}
    return dict(options, law=chosen), selection


def _score_law(name: str, table, train, seed: int, options: dict) -> dict:
    """One candidate of ``law="auto"``, fitted once to ``train``: its AIC, RMS log residual, a and b."""
    opts = _shared_c("3", table, _resolve_law("3", dict(options, law=name)))
    opts, _ = _resolve_delta("3", train, opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = _fit_once("3", train, None, seed, opts)
        except AnalysisError as exc:
            return {"fitted": False, "reason": str(exc)}
    if not result.converged:
        return {"fitted": False, "reason": result.message}
    free = len(BUILTIN[name].parameters)
    return {"fitted": True, "free_parameters": free, "a": result.a, "b": result.b,
            **fit_quality(result, train, free)}


def _resolve_law(approach: str, options: dict) -> dict:
    """``law`` (a name, a file or a LawForm) and ``fix`` (NAME=VALUE items or a dict) as a form and a
    dict; the plain Chinchilla law with nothing pinned stays on approach 3's own fitter."""
    if approach != "3" or (options.get("law") is None and not options.get("fix")):
        return {k: v for k, v in options.items() if k not in ("law", "fix")}
    form = resolve_law(options.get("law") or "chinchilla")
    fix = options.get("fix") or {}
    fixed = with_fixed(form, fix if isinstance(fix, dict) else parse_fix([fix] if isinstance(fix, str) else fix))
    if form is BUILTIN["chinchilla"] and not fixed:
        return {k: v for k, v in options.items() if k not in ("law", "fix")}
    return dict(options, law=form, fix=fixed)


def _shared_c(approach: str, table: pd.DataFrame, options: dict) -> dict:
    """Options plus the whole study's f(N) and FLOP range, so every fit and resample counts C alike."""
    if approach not in ("2", "3") or options.get("k") is not None:
        return options
    shared = dict(options, fpt=flops_per_token_model(table))
    if approach == "3":
        shared["flops_range"] = (float(table["flops"].min()), float(table["flops"].max()))
    return shared


def _fit_train(approach, train, curves, seed, options, held) -> FitResult:
    try:
        return _fit_once(approach, train, curves, seed, options)
    except AnalysisError as exc:
        if len(held):
            raise AnalysisError(f"after holding out {len(held)} run(s) of the largest compute: {exc}") from exc
        raise
