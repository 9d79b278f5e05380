"""Chinchilla approach 2: IsoFLOP profiles.

For each compute budget, a parabola of loss in log N is fitted to the runs
nearest the budget's minimum (``window`` sizes centred on the lowest-loss
size); its vertex gives N_opt, and D_opt = C / f(N_opt) with C the budget's
FLOPs (the geometric mean of its runs' ``flops``) and f the study's FLOPs per
token (``flops_model``), so approaches 2 and 3 count C the same way. Budgets
whose minimum lies at the edge of the sampled sizes, that have fewer than 3
sizes, or whose parabola opens downwards are dropped with a warning. Power
laws N_opt = G*C^a and D_opt = H*C^b are then straight lines in log space, and
the loss at the vertices gives the frontier L(C) = E + A*C^-gamma.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError, AnalysisWarning
from scalelab.analysis.fitting.frontier import allocation_fit
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.budgets import DEFAULT_TOLERANCE, assign_budgets
from scalelab.analysis.runs.flops_model import flops_per_token_model

MIN_SIZES = 3
DEFAULT_WINDOW = 5


def _vertex(x, y):
    """Vertex (x*, y*) and coefficients (c2, c1, c0) of the least-squares parabola through (x, y)."""
    c2, c1, c0 = np.polyfit(x, y, 2)
    if not c2 > 0:
        return None, None, (c2, c1, c0)
    x_star = -c1 / (2 * c2)
    return x_star, c0 - c1 ** 2 / (4 * c2), (c2, c1, c0)


def _window(which, best: int, n_sizes: int, window: int):
    """Mask of the runs whose size is among the ``window`` sizes centred on ``best``."""
    width = max(window, MIN_SIZES)
    lo = max(0, best - (width - 1) // 2)
    hi = min(n_sizes, lo + width)
    lo = max(0, hi - width)
    return (which >= lo) & (which < hi)


def budget_minimum(params, tokens, loss, window: int = DEFAULT_WINDOW):
    """The IsoFLOP minimum of one budget's runs (arrays): (dict, None) or (None, reason it was dropped).

    The dict's ``fitted`` mask marks the runs the parabola was fitted to.
    """
    params, tokens, loss = (np.asarray(v, dtype=float) for v in (params, tokens, loss))
    sizes, which = np.unique(params, return_inverse=True)
    if len(sizes) < MIN_SIZES:
        return None, f"has {len(sizes)} model size(s); a parabola needs at least {MIN_SIZES}"
    # the size with the lowest mean loss (seeds of one size count together)
    per_size = np.bincount(which, weights=loss) / np.bincount(which)
    best = int(np.argmin(per_size))
    if best in (0, len(sizes) - 1):
        side = "smallest" if best == 0 else "largest"
        return None, (f"its lowest loss is at the {side} sampled size (N = {sizes[best]:.3g}): "
                      "the minimum is not bracketed")
    chosen = _window(which, best, len(sizes), window)
    log_n, log_d, fitted = np.log(params[chosen]), np.log(tokens[chosen]), loss[chosen]
    x_n, loss_n, curv_n = _vertex(log_n, fitted)
    _, _, curv_d = _vertex(log_d, fitted)
    if x_n is None:
        return None, "the parabola through the points nearest the minimum opens downwards"
    if not (log_n.min() <= x_n <= log_n.max()):
        return None, "the parabola's vertex lies outside the sizes it was fitted to"
    return {
        "N_opt": float(np.exp(x_n)), "loss_opt": float(loss_n), "loss": float(loss_n),
        "n_runs": int(len(params)), "n_sizes": int(len(sizes)), "n_fitted": int(chosen.sum()),
        "n_fitted_sizes": int(len(np.unique(params[chosen]))),
        "parabola_logN": [float(c) for c in curv_n], "parabola_logD": [float(c) for c in curv_d],
        "N_fit_low": float(params[chosen].min()), "N_fit_high": float(params[chosen].max()),
        "N_min_sampled": float(sizes[0]), "N_max_sampled": float(sizes[-1]), "fitted": chosen,
    }, None


def isoflop_minima(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                   window: int = DEFAULT_WINDOW, fpt=None):
    """Per-budget minima (DataFrame), the dropped budgets [(budget, reason)], and the budget source.

    ``fpt``: the study's FLOPs-per-token model (default: measured from ``table``).
    """
    budget, source = assign_budgets(table, tolerance)
    budget = budget.to_numpy(dtype=float)
    missing = int(np.isnan(budget).sum())
    if missing:
        warnings.warn(f"approach 2: {missing} run(s) have no budget and are left out", AnalysisWarning,
                      stacklevel=3)
    fpt = fpt or flops_per_token_model(table)
    params, tokens, loss, flops = (table[c].to_numpy(dtype=float) for c in ("params", "tokens", "loss", "flops"))
    rows, dropped = [], []
    for value in np.unique(budget[~np.isnan(budget)]):
        members = budget == value
        minimum, reason = budget_minimum(params[members], tokens[members], loss[members], window)
        if minimum is None:
            dropped.append((float(value), reason))
            continue
        minimum.pop("fitted")
        c = float(np.exp(np.mean(np.log(flops[members]))))
        minimum["D_opt"] = float(c / fpt(minimum["N_opt"]))
        rows.append({"budget": float(value), "flops": c, **minimum})
    return pd.DataFrame(rows), dropped, source


def parabola_residuals(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                       window: int = DEFAULT_WINDOW):
    """(smooth loss per run, mask of fitted runs, relative residuals, residual dof) for a residual bootstrap.

    Runs a budget's parabola was fitted to get its value there; other runs keep
    their observed loss (they only decide where the minimum and window lie).
    Residuals are pooled over budgets and inflated by sqrt(n / (n - 3)) per
    parabola for the parameters the fit used up.
    """
    budget = assign_budgets(table, tolerance)[0].to_numpy(dtype=float)
    params, tokens, loss = (table[c].to_numpy(dtype=float) for c in ("params", "tokens", "loss"))
    smooth, residuals, dof = loss.copy(), [], 0
    mask = np.zeros(len(loss), dtype=bool)
    for value in np.unique(budget[~np.isnan(budget)]):
        idx = np.flatnonzero(budget == value)
        minimum, _ = budget_minimum(params[idx], tokens[idx], loss[idx], window)
        if minimum is None:
            continue
        chosen = idx[minimum["fitted"]]
        mask[chosen] = True
        c2, c1, c0 = minimum["parabola_logN"]
        x = np.log(params[chosen])
        smooth[chosen] = c0 + c1 * x + c2 * x ** 2
        if len(chosen) > 3:
            scale = np.sqrt(len(chosen) / (len(chosen) - 3))
            residuals.extend(scale * (loss[chosen] / smooth[chosen] - 1.0))
            dof += len(chosen) - 3
    return smooth, mask, np.asarray(residuals), dof


def fit_approach2(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
                  window: int = DEFAULT_WINDOW, fpt=None, **_ignored) -> FitResult:
    """Fit approach 2 on a validated table (``fpt``: the study's FLOPs-per-token model)."""
    if window < MIN_SIZES:
        raise AnalysisError(f"approach 2: the parabola window must hold at least {MIN_SIZES} sizes, got {window}")
    fpt = fpt or flops_per_token_model(table)
    minima, dropped, source = isoflop_minima(table, tolerance, window, fpt)
    for value, reason in dropped:
        warnings.warn(f"approach 2: dropped budget {value:.3g} FLOPs: {reason}", AnalysisWarning, stacklevel=2)
    if len(minima) < 2:
        listed = "; ".join(f"budget {v:.3g}: {r}" for v, r in dropped) or "none"
        raise AnalysisError(
            f"approach 2 needs at least 2 budgets with a bracketed minimum (each with at least {MIN_SIZES} "
            f"model sizes), got {len(minima)} usable of {len(minima) + len(dropped)} (budgets from {source}). "
            f"Dropped: {listed}")
    result, note = allocation_fit("2", minima["flops"], minima["N_opt"], minima["D_opt"], minima["loss_opt"],
                                  len(table))
    result.conventions["C(N, D)"] = "D_opt = C / f(N_opt); " + fpt.describe()
    result.details = {
        "budgets_from": source, "window": window, "budget_tolerance": tolerance,
        "minima": minima.to_dict(orient="records"),
        "dropped_budgets": [{"budget": v, "reason": r} for v, r in dropped],
        "frontier_note": note,
    }
    return result
