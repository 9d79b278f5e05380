"""Compare two sweeps fitted the same way: exponent differences and effective compute multipliers.

The effective compute multiplier of B over A at budget C is the factor m such
that A needs m*C FLOPs to reach the loss B reaches at C, both read off each
side's fitted compute-optimal loss frontier L(C) = E + A*C^-gamma. m > 1 means
B is more compute-efficient; m is infinite when B's loss at C is below A's
irreducible loss E.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scalelab.analysis.bootstrap import percentile_interval
from scalelab.analysis.decide.rung import verify_dir
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.approaches import fit, normalize_approach
from scalelab.analysis.result import FitResult, json_safe
from scalelab.analysis.runs.budgets import default_budgets, parse_budgets
from scalelab.analysis.runs.inputs import load_inputs
from scalelab.analysis.threads import blas_single_threaded

EXPONENTS = ("a", "b")
APPROACH3_EXPONENTS = ("alpha", "beta")


def frontier_loss(frontier: dict, flops: float) -> float:
    return frontier["E"] + frontier["A"] * flops ** (-frontier["gamma"])


def compute_multiplier(frontier_a: dict | None, frontier_b: dict | None, flops: float) -> float:
    """m with L_A(m*C) = L_B(C); inf when L_B(C) <= E_A, NaN without both frontiers."""
    if not frontier_a or not frontier_b:
        return math.nan
    target = frontier_loss(frontier_b, flops)
    gap = target - frontier_a["E"]
    if not gap > 0:
        return math.inf
    needed = (frontier_a["A"] / gap) ** (1.0 / frontier_a["gamma"])
    return needed / flops


def _frontier_of(sample: dict) -> dict | None:
    keys = ("frontier_E", "frontier_A", "frontier_gamma")
    if not all(k in sample and np.isfinite(sample[k]) for k in keys):
        return None
    return {"E": sample["frontier_E"], "A": sample["frontier_A"], "gamma": sample["frontier_gamma"]}


@dataclass
class CompareResult:
    """Fits of A and B, B - A exponent differences and B-over-A compute multipliers (with 95% CIs)."""

    approach: str
    fit_a: FitResult
    fit_b: FitResult
    names: tuple = ("A", "B")
    differences: dict = field(default_factory=dict)
    multipliers: list = field(default_factory=list)
    trend: dict = field(default_factory=dict)   # the multiplier's slope in log C (see `multiplier_trend`)
    converged: bool = True
    message: str = ""
    notes: list = field(default_factory=list)
    rung: dict = field(default_factory=dict)    # the multiplier claimed at a rung against the rungs' measurement

    def to_dict(self) -> dict:
        return json_safe({
            "approach": self.approach, "names": list(self.names), "converged": self.converged,
            "message": self.message, "differences": self.differences, "multipliers": self.multipliers,
            "trend": self.trend, "rung": self.rung,
            "notes": self.notes, "fit_a": self.fit_a.to_dict(), "fit_b": self.fit_b.to_dict(),
        })


@blas_single_threaded
def compare(table_a, table_b, approach="3", budgets=None, bootstrap: int = 0, seed: int = 0,
            names=None, rungs=None, **options) -> CompareResult:
    """Fit A and B with the same method and compare them.

    table_a/table_b: tables (path or DataFrame) or sweep directories. With
    ``bootstrap`` > 0 each side is resampled independently and the differences
    and multipliers get percentile 95% intervals. ``rungs``: each side's trained
    prediction rung (directories of ``analyze rung -o``, one budget): the multiplier
    claimed there is checked against the rungs' measured losses (``check_at_rung``).
    """
    approach = normalize_approach(approach)
    (data_a, label_a), (data_b, label_b) = load_inputs(table_a), load_inputs(table_b)
    names = tuple(names) if names else (label_a, label_b)
    budgets = parse_budgets(budgets) or sorted(set(default_budgets(data_a)) | set(default_budgets(data_b)))
    fit_a = fit(data_a, approach, bootstrap=bootstrap, budgets=budgets, seed=seed, **options)
    fit_b = fit(data_b, approach, bootstrap=bootstrap, budgets=budgets, seed=seed + 1, **options)
    result = compare_fits(fit_a, fit_b, names, budgets)
    if rungs and result.converged:
        result.rung = check_at_rung(result, *(verify_dir(r) for r in rungs))
    return result


def compare_fits(fit_a: FitResult, fit_b: FitResult, names=("A", "B"), budgets=()) -> CompareResult:
    """Compare two fits already made with the same approach (bootstrap samples give the intervals)."""
    if fit_a.approach != fit_b.approach:
        raise AnalysisError(f"cannot compare approach {fit_a.approach} with approach {fit_b.approach}")
    approach = fit_a.approach
    result = CompareResult(approach=approach, fit_a=fit_a, fit_b=fit_b, names=tuple(names))
    if not (fit_a.converged and fit_b.converged):
        result.converged = False
        result.message = "; ".join(f"{n}: {f.message}" for n, f in zip(names, (fit_a, fit_b), strict=True) if not f.converged)
        return result
    pairs = list(zip(fit_a.samples, fit_b.samples, strict=False))   # failed resamples shorten a side
    summary_a, summary_b = fit_a.summary(), fit_b.summary()
    keys = EXPONENTS + (APPROACH3_EXPONENTS if approach == "3" else ())
    laws = [((f.details or {}).get("law") or {}).get("name", "chinchilla") for f in (fit_a, fit_b)]
    if laws[0] != laws[1]:  # `--law auto` chose each side's form: their own parameters are not comparable
        result.notes.append(f"the sides' law forms differ ({names[0]}: {laws[0]}, {names[1]}: {laws[1]}, each "
                            "chosen by its own runs): only a, b and the frontiers L(C) are compared")
        keys = EXPONENTS
    for key in (k for k in keys if k in summary_a and k in summary_b):
        value_a, value_b = summary_a[key], summary_b[key]
        entry = {names[0]: value_a, names[1]: value_b, "difference": value_b - value_a}
        if pairs:
            entry["ci"] = percentile_interval([sb[key] - sa[key] for sa, sb in pairs])
            entry["ci_" + names[0]] = fit_a.ci.get(key)
            entry["ci_" + names[1]] = fit_b.ci.get(key)
        result.differences[key] = entry
    if not (fit_a.frontier and fit_b.frontier):
        result.notes.append("no compute multiplier: a side has no fitted loss frontier L(C)")
    for c in budgets:
        row = {"budget": float(c), f"loss_{names[0]}": float(fit_a.loss_opt(c)),
               f"loss_{names[1]}": float(fit_b.loss_opt(c)),
               "multiplier": compute_multiplier(fit_a.frontier, fit_b.frontier, c)}
        if pairs:
            values = [compute_multiplier(_frontier_of(sa), _frontier_of(sb), c) for sa, sb in pairs]
            row["ci"] = _multiplier_interval(values)
        result.multipliers.append(row)
    result.trend = multiplier_trend(fit_a, fit_b, pairs, budgets)
    if pairs:
        result.notes.append(f"intervals from {len(pairs)} paired bootstrap resamples (A and B resampled "
                            "independently); percentile 95%")
    result.notes.append(f"multiplier m: {names[0]} needs m*C FLOPs to reach the loss {names[1]} reaches at C "
                        f"(m > 1: {names[1]} is more compute-efficient)")
    return result


def _log_slope(budgets, multipliers) -> float:
    m = np.asarray(multipliers, dtype=float)
    if len(m) < 2 or not np.all(np.isfinite(m) & (m > 0)):
        return math.nan
    return float(np.polyfit(np.log10(budgets), np.log10(m), 1)[0])


def multiplier_trend(fit_a: FitResult, fit_b: FitResult, pairs, budgets) -> dict:
    """Does B's gain grow or shrink with scale: the slope s of log10 m against log10 C over the
    budgets (m ~ C^s; 10^s per decade of compute), with a percentile interval over the paired
    resamples whose multipliers are finite at every budget. Empty with fewer than 2 budgets."""
    budgets = [float(c) for c in budgets]
    if len(budgets) < 2 or not (fit_a.frontier and fit_b.frontier):
        return {}
    slope = _log_slope(budgets, [compute_multiplier(fit_a.frontier, fit_b.frontier, c) for c in budgets])
    out = {"slope": slope, "per_decade": 10.0 ** slope if math.isfinite(slope) else math.nan,
           "budgets": [min(budgets), max(budgets)]}
    draws = [_log_slope(budgets, [compute_multiplier(_frontier_of(sa), _frontier_of(sb), c) for c in budgets])
             for sa, sb in pairs]
    draws = [d for d in draws if math.isfinite(d)]
    if len(draws) >= 2:
        out["ci"] = percentile_interval(draws)
        out["resamples"] = len(draws)
        low, high = out["ci"]
        out["verdict"] = ("grows with compute" if low > 0 else "shrinks with compute" if high < 0
                          else "no trend established (the interval contains 0)")
    return out


def _multiplier_interval(values):
    """Percentile interval in log space; infinite draws count as +inf, NaN ones are dropped."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return (math.nan, math.nan)
    with np.errstate(divide="ignore"):
        logs = np.sort(np.log(values))
    low, high = (logs[int(round(q * (len(logs) - 1)))] for q in (0.025, 0.975))
    return (float(np.exp(low)), float(np.exp(high)))


def anchored_multiplier(frontier_a: dict | None, loss_a: float, loss_b: float) -> float:
    """m with A's frontier, moved to pass through A's measured loss at the rung, reaching B's measured
    loss at m times the rung's compute: (L_B - E_A) / (L_A - E_A) = m^-gamma_A. Only A's floor and
    slope are read off its law; its level is the rung's."""
    if not frontier_a:
        return math.nan
    low, high = loss_b - frontier_a["E"], loss_a - frontier_a["E"]
    if not high > 0:
        return math.nan
    if not low > 0:
        return math.inf
    return float((low / high) ** (-1.0 / frontier_a["gamma"]))


def check_at_rung(result: CompareResult, rung_a: dict, rung_b: dict) -> dict:
    """The multiplier the fits claim at the rungs' budget against the one the rungs measured (each
    side's best size, mean of its seeds, `rung.verify_rung`): is the measurement inside the claim's
    95% interval (`inside`), and does the claim hold at all (the measured multiplier on the same side
    of 1). The measured one's interval carries A's floor and slope only, not the rungs' noise."""
    budget = float(rung_a["budget"])
    if not math.isclose(budget, float(rung_b["budget"]), rel_tol=1e-3):
        raise AnalysisError(f"the rungs are at different budgets ({budget:.3g} and {float(rung_b['budget']):.3g} "
                            "FLOPs): train both ideas' rungs at one budget to compare them there")
    names = result.names
    loss_a, loss_b = (min(r["measured"] for r in rung["sizes"]) for rung in (rung_a, rung_b))
    fa, fb = result.fit_a, result.fit_b
    pairs = list(zip(fa.samples, fb.samples, strict=False))
    claimed = compute_multiplier(fa.frontier, fb.frontier, budget)
    measured = anchored_multiplier(fa.frontier, loss_a, loss_b)
    out = {"budget": budget, f"measured_loss_{names[0]}": loss_a, f"measured_loss_{names[1]}": loss_b,
           f"predicted_loss_{names[0]}": float(fa.loss_opt(budget)), f"predicted_loss_{names[1]}": float(fb.loss_opt(budget)),
           "claimed": claimed, "measured": measured}
    if pairs:
        out["claimed_ci"] = _multiplier_interval([compute_multiplier(_frontier_of(sa), _frontier_of(sb), budget)
                                                  for sa, sb in pairs])
        out["measured_ci"] = _multiplier_interval([anchored_multiplier(_frontier_of(sa), loss_a, loss_b)
                                                   for sa in fa.samples])
        low, high = out["claimed_ci"]
        out["inside"] = bool(low <= measured <= high) if math.isfinite(measured) else None
    out["same_side_of_one"] = bool((claimed > 1) == (measured > 1)) if math.isfinite(measured) else None
    return out
