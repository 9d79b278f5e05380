"""Chinchilla approach 3: the parametric law L(N, D) = E + A/N^alpha + B/D^beta.

The fit minimises the SUM over runs of Huber losses (delta = 1e-3 as published, or
``delta="auto"``: 1.345 sigma of the data's own log residuals, see ``auto_delta``) of the
log-space residual

    r = LSE(a - alpha*log N, b - beta*log D, e) - log L,   A = e^a, B = e^b, E = e^e,

from a grid of thousands of initialisations, with the robust fitter every law form shares
(``robust``: all starts to convergence together, the best few polished). The result reports the
best objective and how many starts reached it.

Compute-optimal allocation: N_opt(C) minimises L(N, D) under the study's own
C(N, D) = f(N)*D, with f(N) the table's flops/tokens as a smooth function of N
(``flops_model``; ``optimum`` does the minimisation). Only under C = k*N*D
(``k`` given) is this the closed form
    N_opt = G (C/k)^(beta/(alpha+beta)),  G = (alpha*A / (beta*B))^(1/(alpha+beta)).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from scalelab.analysis.conventions import base_conventions
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.optimum import attach_allocation
from scalelab.analysis.fitting.robust import (
    DEFAULT_DELTA,
    GRID_A,
    GRID_B,
    GRID_E,
    GRID_EXPONENT,
    HuberObjective,
    best_fit,
    grid_starts,
    huber_terms,
)
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.flops_model import flops_per_token_model

MIN_RUNS = 6
EXP_CAP = 700.0  # exp() overflows above ~709
PARAM_ORDER = ("a", "b", "e", "alpha", "beta")

def start_grid(n_starts: int | None = None, seed: int = 0) -> np.ndarray:
    """Initial points (rows of a, b, e, alpha, beta).

    The full grid has 4500 points; fewer are a random subset of it, more add
    uniform random points in the grid's box.
    """
    return grid_starts((GRID_A, GRID_B, GRID_E, GRID_EXPONENT, GRID_EXPONENT), n_starts, seed)


class ChinchillaObjective(HuberObjective):
    """Approach 3's objective for L = E + A/N^alpha + B/D^beta, in closed log-sum-exp arithmetic:
    the residual r = LSE(a - alpha*log N, b - beta*log D, e) - log L for theta = (a, b, e, alpha, beta)."""

    def __init__(self, params, tokens, loss, delta: float = DEFAULT_DELTA):
        self.log_n = np.log(np.asarray(params, dtype=float))
        self.log_d = np.log(np.asarray(tokens, dtype=float))
        self.log_l = np.log(np.asarray(loss, dtype=float))
        self.delta = float(delta)

    def _evaluate(self, theta, weights):
        a, b, e, alpha, beta = (theta[:, i:i + 1] for i in range(5))
        # exp(z) directly is exact LSE arithmetic while z stays below ~700; cap to avoid overflow
        term_n = np.exp(np.minimum(a - alpha * self.log_n, EXP_CAP))
        term_d = np.exp(np.minimum(b - beta * self.log_d, EXP_CAP))
        term_e = np.exp(np.minimum(e, EXP_CAP))
        total = term_n + term_d
        total += term_e
        residual = np.log(total)
        residual -= self.log_l
        huber, slope = huber_terms(residual, self.delta)
        f = huber.sum(axis=1)
        q = slope / total
        qn = q * term_n
        qd = q * term_d
        grad = np.column_stack([qn.sum(axis=1), qd.sum(axis=1), term_e[:, 0] * q.sum(axis=1),
                                -(qn @ self.log_n), -(qd @ self.log_d)])
        return f, grad

    def predict_log(self, theta, log_n, log_d):
        a, b, e, alpha, beta = theta
        return logsumexp(np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)]), axis=0)


def compute_optimal_coefficients(E, A, B, alpha, beta, k):
    """N_opt = G*C^a, D_opt = H*C^b and the frontier E + K*C^-gamma under C = k*N*D."""
    a = beta / (alpha + beta)
    b = alpha / (alpha + beta)
    g_nd = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))   # N_opt = g_nd * (C/k)^a
    G = g_nd * k ** (-a)
    H = k ** (-b) / g_nd
    gamma = alpha * beta / (alpha + beta)
    K = A * G ** (-alpha) + B * H ** (-beta)
    return {"a": a, "b": b, "G": G, "H": H, "G_nd": g_nd, "frontier": {"E": E, "A": K, "gamma": gamma}}


def _check_input(table) -> None:
    n = len(table)
    distinct_n, distinct_d = table["params"].nunique(), table["tokens"].nunique()
    if n < MIN_RUNS or distinct_n < 2 or distinct_d < 2:
        raise AnalysisError(
            f"approach 3 fits 5 parameters and needs at least {MIN_RUNS} runs with at least 2 distinct "
            f"params and 2 distinct tokens values; got {n} runs ({distinct_n} params, {distinct_d} tokens values)")


def fit_approach3(table, n_starts: int | None = None, starts=None, delta: float = DEFAULT_DELTA,
                  k=None, seed: int = 0, n_polish: int = 5, best_rtol: float = 1e-4,
                  max_iter: int = 400, flops_range=None, fpt=None, **_ignored) -> FitResult:
    """Fit L(N, D) on the runs of ``table`` (validated) and derive the compute-optimal allocation.

    ``starts`` (rows of a, b, e, alpha, beta) overrides the grid; ``n_starts``
    sizes the grid (default 4500). A start "reached the best" when its end
    objective is within ``best_rtol`` (relative) of the best. The allocation
    uses the study's C(N, D) = f(N)*D (``fpt``, default measured from the table;
    ``k`` given: C = k*N*D); a and b are
    fitted over ``flops_range`` (default: the table's FLOP range).
    """
    _check_input(table)
    n = len(table)
    objective = ChinchillaObjective(table["params"], table["tokens"], table["loss"], delta)
    initial = start_grid(n_starts, seed) if starts is None else np.atleast_2d(np.asarray(starts, dtype=float))
    theta, f_best, converged, message, batch = best_fit(objective, initial, n_polish, max_iter)
    if theta is None:
        return FitResult(approach="3", converged=False, n_runs=n, message=f"approach 3: {message}")
    reached = batch.f <= f_best + best_rtol * abs(f_best) + 1e-15
    a_log, b_log, e_log, alpha, beta = (float(v) for v in theta)
    params = {"E": float(np.exp(e_log)), "A": float(np.exp(a_log)), "B": float(np.exp(b_log)),
              "alpha": alpha, "beta": beta}
    fpt = flops_per_token_model(table, k) if k is not None or fpt is None else fpt
    conventions = base_conventions()
    conventions["C(N, D)"] = fpt.describe()
    details = {
        "objective": f_best, "objective_form": "sum of Huber losses of log residuals (log-sum-exp form)",
        "huber_delta": delta, "n_starts": int(len(initial)), "n_reached_best": int(reached.sum()),
        "best_tolerance": f"objective within {best_rtol:g} (relative) of the best",
        "batch_iterations": batch.iterations, "batch_converged_starts": int(batch.converged.sum()),
        "polish": message, "log_params": dict(zip(PARAM_ORDER, map(float, theta), strict=True)),
        "flops_per_token": fpt.to_dict(), "loss_min": float(table["loss"].min()),
        "k": float(k) if k is not None else float(np.median(table["flops"] / (table["params"] * table["tokens"]))),
        "k_note": "k = flops/(N*D): given, or the table's median for reference; the allocation uses C(N, D)",
    }
    result = FitResult(approach="3", converged=converged, n_runs=n, params=params,
                       conventions=conventions, details=details)
    if not converged:
        result.message = f"approach 3: L-BFGS-B did not converge from the best starts ({message})"
        return result
    if not (alpha > 1e-6 and beta > 1e-6 and np.isfinite(list(params.values())).all()):
        result.converged = False
        result.message = (f"approach 3: the best fit is degenerate (alpha = {alpha:.3g}, beta = {beta:.3g}); "
                          "no compute-optimal allocation follows from it")
        return result
    attach_allocation(result, fpt, flops_range or (table["flops"].min(), table["flops"].max()))
    return result


HUBER_EFFICIENCY = 1.345   # Huber's constant: 95% of least squares' efficiency under Gaussian noise
AUTO_DELTA_RANGE = (DEFAULT_DELTA, 0.1)


def auto_delta(table, fitter=None, **options) -> tuple[float, dict]:
    """Huber's delta from the data: 1.345 sigma, sigma = 1.4826 * MAD of the log residuals of a first
    fit at the published delta (1e-3). With run-to-run noise of a few percent (small models, one
    seed), 1e-3 is a fraction of sigma and makes the fit an L1 regression that throws away most
    of the data's precision; 1.345 sigma keeps the robustness to outliers at little cost.
    ``fitter`` (default ``fit_approach3``) makes the first fit: a law form's own fitter.
    Returns (delta, how it was chosen)."""
    first = (fitter or fit_approach3)(table, delta=DEFAULT_DELTA, **options)
    if not first.converged:
        return DEFAULT_DELTA, {"rule": "auto: the first fit did not converge; the published 1e-3 is used"}
    residual = np.log(first.predict_table(table)) - np.log(table["loss"])
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    delta = float(np.clip(HUBER_EFFICIENCY * sigma, *AUTO_DELTA_RANGE))
    return delta, {"rule": f"auto: {HUBER_EFFICIENCY} x sigma of the log residuals (1.4826 x MAD) of a first "
                           f"fit at delta {DEFAULT_DELTA:g}, within [{AUTO_DELTA_RANGE[0]:g}, {AUTO_DELTA_RANGE[1]:g}]",
                   "residual_sigma": sigma}
