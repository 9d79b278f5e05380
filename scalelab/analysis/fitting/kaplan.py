"""Kaplan et al. (2020) style fits.

* L(N) = E + (Nc/N)^alpha_N on the per-N best runs (for each size, its most-data run),
* L(D) = E + (Dc/D)^alpha_D on the per-D best runs (for each token count, within 5%,
  its lowest-loss run),
* L(C) = E + (Cc/C)^alpha_C on the frontier: the lower envelope of loss vs FLOPs.

Each series keeps only points that improve on every point with a smaller x
(a lower envelope), so under-trained large models do not bend L(N).
Compute-optimal exponents a, b: power laws of N and D through the frontier
runs. Kaplan's own derivation, a = alpha_C/alpha_N and b = alpha_C/alpha_D,
is recorded in the details.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalelab.analysis.conventions import base_conventions
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.power import fit_power_law, fit_saturating_law
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.budgets import group_by_flops

MIN_POINTS = 3


def lower_envelope(x, y) -> np.ndarray:
    """Indices (in x order) of points whose y is below every point with smaller x."""
    order = np.argsort(x, kind="stable")
    keep, best = [], np.inf
    for i in order:
        if y[i] < best:
            keep.append(i)
            best = y[i]
    return np.array(keep, dtype=int)


def per_size_best(table: pd.DataFrame) -> pd.DataFrame:
    """For each params value, the run with the most tokens (lowest loss among ties)."""
    ranked = table.sort_values(["params", "tokens", "loss"], ascending=[True, False, True])
    return ranked.drop_duplicates("params")


def per_tokens_best(table: pd.DataFrame, tolerance: float = 0.05) -> pd.DataFrame:
    """For each token count (grouped within ``tolerance``), the lowest-loss run."""
    groups = group_by_flops(table["tokens"].to_numpy(dtype=float), tolerance)
    ranked = table.assign(_group=groups).sort_values(["_group", "loss"])
    return ranked.drop_duplicates("_group").drop(columns="_group")


def frontier_runs(table: pd.DataFrame) -> pd.DataFrame:
    """Runs on the lower envelope of loss vs FLOPs."""
    idx = lower_envelope(table["flops"].to_numpy(dtype=float), table["loss"].to_numpy(dtype=float))
    return table.iloc[idx]


def _envelope_series(runs: pd.DataFrame, column: str) -> pd.DataFrame:
    idx = lower_envelope(runs[column].to_numpy(dtype=float), runs["loss"].to_numpy(dtype=float))
    return runs.iloc[idx]


def _law(runs: pd.DataFrame, column: str, what: str):
    if runs[column].nunique() < MIN_POINTS:
        raise AnalysisError(
            f"Kaplan {what} needs at least {MIN_POINTS} distinct {column} values on its lower envelope, "
            f"got {runs[column].nunique()}")
    return fit_saturating_law(runs[column], runs["loss"], f"Kaplan {what}", MIN_POINTS)


def fit_kaplan(table: pd.DataFrame, **_ignored) -> FitResult:
    """Fit the Kaplan-style laws on a validated table."""
    if len(table) < MIN_POINTS + 1:
        raise AnalysisError(f"Kaplan fits need at least {MIN_POINTS + 1} runs, got {len(table)}")
    n_runs = _envelope_series(per_size_best(table), "params")
    d_runs = _envelope_series(per_tokens_best(table), "tokens")
    c_runs = frontier_runs(table)
    laws = {"N": _law(n_runs, "params", "L(N)"), "D": _law(d_runs, "tokens", "L(D)"),
            "C": _law(c_runs, "flops", "L(C)")}
    result = FitResult(approach="kaplan", converged=True, n_runs=len(table), conventions=base_conventions())
    failed = [law.message for law in laws.values() if not law.converged]
    if failed:
        result.converged = False
        result.message = "; ".join(failed)
        return result
    for key, law in laws.items():
        result.params.update({f"E_{key}": law.E, f"{key}c": law.xc, f"alpha_{key}": law.gamma})
    n_law = fit_power_law(c_runs["flops"], c_runs["params"], "Kaplan N_opt(C)")
    d_law = fit_power_law(c_runs["flops"], c_runs["tokens"], "Kaplan D_opt(C)")
    result.a, result.G = n_law.exponent, n_law.coefficient
    result.b, result.H = d_law.exponent, d_law.coefficient
    law_c = laws["C"]
    result.frontier = {"E": law_c.E, "A": law_c.A, "gamma": law_c.gamma}
    result.details = {
        "points": {"L(N)": len(n_runs), "L(D)": len(d_runs), "L(C)": len(c_runs)},
        "a_from_alphas": law_c.gamma / laws["N"].gamma,
        "b_from_alphas": law_c.gamma / laws["D"].gamma,
        "exponents_note": ("a, b: power laws of params and tokens through the runs on the loss-vs-FLOPs "
                           "frontier; a_from_alphas = alpha_C/alpha_N, b_from_alphas = alpha_C/alpha_D"),
        "frontier_runs": c_runs[["params", "tokens", "flops", "loss"]].to_dict(orient="records"),
    }
    return result
