"""The compute-optimal loss frontier L(C) = E + A*C^-gamma, fitted through per-budget minima."""

from __future__ import annotations

import warnings

import numpy as np

from .errors import AnalysisWarning
from .laws import fit_power_law, fit_saturating_law


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
            return {"E": law.E, "A": law.A, "gamma": law.gamma}, "E + A*C^-gamma through the minima"
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
