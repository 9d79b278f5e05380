"""The compute-optimal loss frontier L(C) = E + A*C^-gamma, fitted through per-budget minima."""

from __future__ import annotations

import warnings

import numpy as np

from scalelab.analysis.errors import AnalysisWarning
from scalelab.analysis.fitting.power import fit_power_law, fit_saturating_law


def fit_frontier(flops, loss, what: str) -> tuple[dict | None, str]:
    """Fit L(C) through (flops, loss) minima. Returns (frontier dict or None, note).

    Three or more distinct budgets: E + A*C^-gamma. Two: a pure power law
    (E = 0), with a warning. Fewer, or a failed fit: None, with a warning.
    """
    flops = np.asarray(flops, dtype=float)
    loss = np.asarray(loss, dtype=float)
    distinct = len(np.unique(flops))
    if distinct >= 3:
        law = fit_saturating_law(flops, loss, f"{what} frontier L(C)")
        if law.converged:
            note = "E + A*C^-gamma through the minima"
            if law.at_bound:
                note += f" (at a bound of the optimiser: {', '.join(law.at_bound)})"
            return {"E": law.E, "A": law.A, "gamma": law.gamma}, note
        note = f"the frontier fit did not converge ({law.message})"
    elif distinct == 2:
        law = fit_power_law(flops, loss, f"{what} frontier L(C)")
        note = "only 2 budgets: the frontier is a pure power law A*C^-gamma (E fixed at 0)"
        warnings.warn(f"{what}: {note}", AnalysisWarning, stacklevel=3)
        return {"E": 0.0, "A": law.coefficient, "gamma": -law.exponent}, note
    else:
        note = f"the frontier needs at least 2 budgets, got {distinct}"
    warnings.warn(f"{what}: no loss frontier: {note}", AnalysisWarning, stacklevel=3)
    return None, note


def allocation_fit(approach: str, flops, n_opt, d_opt, loss_opt, n_runs: int):
    """A FitResult from compute-optimal points: power laws N_opt = G*C^a, D_opt = H*C^b, and the
    loss frontier through them (shared by approaches 1 and 2). Returns (result, frontier note)."""
    from scalelab.analysis.conventions import base_conventions
    from scalelab.analysis.result import FitResult

    n_law = fit_power_law(flops, n_opt, f"approach {approach} N_opt(C)")
    d_law = fit_power_law(flops, d_opt, f"approach {approach} D_opt(C)")
    result = FitResult(approach=approach, converged=True, n_runs=n_runs,
                       a=n_law.exponent, b=d_law.exponent, G=n_law.coefficient, H=d_law.coefficient,
                       conventions=base_conventions())
    result.params = {"G": n_law.coefficient, "a": n_law.exponent, "H": d_law.coefficient, "b": d_law.exponent}
    result.frontier, note = fit_frontier(flops, loss_opt, f"approach {approach}")
    return result, note
