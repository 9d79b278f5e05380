"""Is a fit determined, and what do the determined fits say together?

``assess`` marks a fit "not determined", with every reason, when it is
degenerate (an exponent outside its plausible range, a coefficient beyond any
data scale, a parameter at a limit of the optimiser, no interior optimum, too
few budgets), when fewer than 80% of its bootstrap resamples fitted, when a
point estimate lies outside its own interval, or when the interval on a or b
reaches outside [0, 1] (the data cannot tell N_opt growing from shrinking).
``agreement.build_verdict`` then states, for one study, which determined
approaches agree on a and b (each estimate inside the other's 95% interval),
the frontier L(C) and the held-out error into a ``Verdict``; ``read_verdict``
reads it back from a report directory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scalelab.analysis.result import FitResult, json_safe

DETERMINED, NOT_DETERMINED = "determined", "not determined"
ALLOCATION_RANGE = (0.05, 0.95)     # a and b
LAW_EXPONENT_RANGE = (0.0, 3.0)     # alpha and beta, open interval
COEFFICIENT_LIMIT = 1e12            # A and B: beyond any loss-and-size scale of real data
E_FLOOR = 0.01                      # E below this share of the lowest loss: at its limit (0)
MIN_FITTED_FRACTION = 0.8
POSSIBLE_RANGE = (0.0, 1.0)         # an interval on a or b reaching beyond this admits N_opt or D_opt
                                    # falling with compute (or growing faster than C): not a measurement
MIN_BUDGETS = 3
LABELS = {"kaplan": "Kaplan", "1": "approach 1", "2": "approach 2", "3": "approach 3"}


def _finite(*values) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _degenerate(result: FitResult) -> list[str]:
    reasons = []
    low, high = ALLOCATION_RANGE
    for key in ("a", "b") if result.allocates else ():
        value = getattr(result, key)
        if not (_finite(value) and low <= value <= high):
            reasons.append(f"{key} = {value:.3g} is outside the plausible range [{low}, {high}]")
    if result.approach == "3":
        reasons += _law_degenerate(result)
    if result.approach == "2" and len(result.details.get("minima", [])) < MIN_BUDGETS:
        reasons.append(f"only {len(result.details['minima'])} budgets have a bracketed minimum: a power law "
                       f"through them needs at least {MIN_BUDGETS} to be checked")
    return reasons


def _exponents(params: dict) -> tuple:
    """The exponents of a law: alpha and beta of Chinchilla's names, else every alpha* parameter."""
    if {"alpha", "beta"} <= set(params):
        return ("alpha", "beta")
    return tuple(k for k in params if k.startswith("alpha"))


def _law_degenerate(result: FitResult) -> list[str]:
    p, d = result.params, result.details
    reasons = [f"{key} = {p[key]:.3g} is outside the plausible range (0, 3)" for key in _exponents(p)
               if not (_finite(p[key]) and LAW_EXPONENT_RANGE[0] < p[key] < LAW_EXPONENT_RANGE[1])]
    if not result.allocates:
        return reasons
    if {"A", "B", "E"} <= set(p):
        for key in ("A", "B"):
            if not (_finite(p[key]) and p[key] <= COEFFICIENT_LIMIT):
                reasons.append(f"{key} = {p[key]:.3g} is beyond any data scale (> {COEFFICIENT_LIMIT:.0e})")
        if p["E"] < E_FLOOR * d.get("loss_min", 1.0):
            reasons.append(f"E = {p['E']:.3g} is at its lower limit (0): the law has no floor")
    if d.get("interior_optimum") is False:
        reasons.append("the loss has no interior compute-optimal N over the study's compute range")
    return reasons


def _unstable(result: FitResult) -> list[str]:
    b = result.bootstrap
    if not b or not b.get("requested"):
        return []
    reasons = []
    if b["succeeded"] < MIN_FITTED_FRACTION * b["requested"]:
        reasons.append(f"only {b['succeeded']} of {b['requested']} bootstrap resamples fitted "
                       f"(needs {MIN_FITTED_FRACTION:.0%})")
    keys = (("a", "b") if result.allocates else ()) + (_exponents(result.params) if result.approach == "3" else ())
    for key in keys:
        value = result.params.get(key, getattr(result, key, None))
        low, high = result.ci.get(key, (None, None))
        if _finite(value, low, high) and not low <= value <= high:
            reasons.append(f"{key} = {value:.3g} lies outside its own 95% interval [{low:.3g}, {high:.3g}]")
        elif not _finite(low, high) and b["succeeded"]:
            reasons.append(f"{key} has no interval")
        elif key in ("a", "b") and _finite(low, high) and (low < POSSIBLE_RANGE[0] or high > POSSIBLE_RANGE[1]):
            reasons.append(f"the 95% interval of {key}, [{low:.3g}, {high:.3g}], reaches outside "
                           f"[{POSSIBLE_RANGE[0]:g}, {POSSIBLE_RANGE[1]:g}]: the data do not determine {key}")
    return reasons


def assess(result: FitResult) -> tuple[str, list[str]]:
    """(status, reasons): "determined" with no reasons, or "not determined" with every reason."""
    if not result.converged:
        return NOT_DETERMINED, [result.message or "the fit did not converge"]
    reasons = _degenerate(result) + _unstable(result)
    return (NOT_DETERMINED, reasons) if reasons else (DETERMINED, [])


def mark(result: FitResult) -> FitResult:
    """Set ``status`` and ``reason`` on the result (returns it)."""
    result.status, reasons = assess(result)
    result.reason = "; ".join(reasons)
    return result


def not_fitted(approach: str, reason: str) -> FitResult:
    """A placeholder result for an approach the data could not support at all."""
    return FitResult(approach=approach, converged=False, message=reason, status=NOT_DETERMINED, reason=reason)


@dataclass
class Verdict:
    """What one study's fits say, per approach and together."""

    study: str
    approaches: dict = field(default_factory=dict)   # approach -> status, reason, a, b, ci, bootstrap, holdout
    agreement: list = field(default_factory=list)    # one row per pair of determined approaches
    frontier: dict | None = None
    holdout: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)        # the markdown verdict

    def status(self, approach: str) -> str:
        return self.approaches.get(approach, {}).get("status", "not fitted")

    def determined(self, approach: str) -> bool:
        return self.status(approach) == DETERMINED

    def agree(self, first: str, second: str, key: str = "a") -> bool:
        """True when both are determined and each one's estimate of ``key`` lies in the other's interval."""
        for row in self.agreement:
            if set(row["approaches"]) == {first, second}:
                return bool(row[key])
        return False

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


def read_verdict(report_dir) -> dict[str, Verdict]:
    """The verdicts of a report directory (``verdict.json``), by study label."""
    data = json.loads((Path(report_dir) / "verdict.json").read_text())
    return {label: Verdict(**value) for label, value in data.items()}
