"""Compute-optimal allocation of L(N, D) = E + A/N^alpha + B/D^beta under C = f(N)*D.

For each C, N_opt minimises A*N^-alpha + B*(C/f(N))^-beta over log N; the
minimum is found on a dense grid of log N around the closed-form C = k*N*D
answer and refined by golden-section search (f is only piecewise smooth, so
no derivative is used). D_opt = C / f(N_opt).

The compute-optimal exponents a, b are the slopes of log N_opt and log D_opt
against log C, fitted over the study's compute range (under C = k*N*D they are
exactly beta/(alpha+beta) and alpha/(alpha+beta); with the study's f they are
not, and b = 1 - a * dlog f/dlog N). The frontier L(C) is written
E + K*C^-gamma with E the fitted E and K, gamma fitted to log(L_opt - E) over
the same range.
"""

from __future__ import annotations

import numpy as np

from .flops_model import FlopsPerToken

GRID_HALF_WIDTH = 9.0      # nats of log N either side of the closed-form guess
GRID_POINTS = 721
GOLDEN_STEPS = 40
RANGE_POINTS = 25


def _objective(params, fpt: FlopsPerToken, log_c, log_n):
    """The reducible loss A*N^-alpha + B*D^-beta at log N with D = C/f(N), broadcast."""
    log_d = log_c - fpt.log_value(log_n)
    with np.errstate(over="ignore"):
        return (np.exp(np.log(params["A"]) - params["alpha"] * log_n)
                + np.exp(np.log(params["B"]) - params["beta"] * log_d))


def _guess(params, fpt: FlopsPerToken, log_c):
    """Closed-form log N_opt under C = k*N*D with k = f(N)/N at the geometric-middle size."""
    alpha, beta = params["alpha"], params["beta"]
    middle = float(np.mean(fpt.log_n))
    log_k = float(fpt.log_value(middle)) - middle
    log_g = (np.log(alpha * params["A"]) - np.log(beta * params["B"])) / (alpha + beta)
    return log_g + beta / (alpha + beta) * (log_c - log_k)


def exact_optimum(params: dict, fpt: FlopsPerToken, flops):
    """(N_opt, D_opt, L_opt, interior) arrays for the budgets ``flops``.

    ``interior`` is False where the minimum sits at the edge of the searched
    range (a degenerate law with no compute-optimal size there).
    """
    log_c = np.log(np.atleast_1d(np.asarray(flops, dtype=float)))[:, None]
    with np.errstate(all="ignore"):
        centre = _guess(params, fpt, log_c)
    centre = np.clip(np.where(np.isfinite(centre), centre, float(np.mean(fpt.log_n))), -50.0, 80.0)
    offsets = np.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS)[None, :]
    values = _objective(params, fpt, log_c, centre + offsets)
    best = np.argmin(np.where(np.isfinite(values), values, np.inf), axis=1)
    interior = (best > 0) & (best < GRID_POINTS - 1)
    step = offsets[0, 1] - offsets[0, 0]
    low = centre[:, 0] + offsets[0, np.clip(best - 1, 0, None)]
    high = low + 2 * step
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(GOLDEN_STEPS):   # golden section, vectorised over the budgets
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        f_left = _objective(params, fpt, log_c[:, 0], left)
        f_right = _objective(params, fpt, log_c[:, 0], right)
        keep_left = f_left < f_right
        high = np.where(keep_left, right, high)
        low = np.where(keep_left, low, left)
    log_n = 0.5 * (low + high)
    log_d = log_c[:, 0] - fpt.log_value(log_n)
    loss = params["E"] + _objective(params, fpt, log_c[:, 0], log_n)
    return np.exp(log_n), np.exp(log_d), loss, interior


def range_grid(flops_range, points: int = RANGE_POINTS) -> np.ndarray:
    low, high = (float(v) for v in flops_range)
    if not high > low:
        high = low * 1.0001
    return np.logspace(np.log10(low), np.log10(high), points)


def allocation_laws(params: dict, fpt: FlopsPerToken, flops_range) -> dict:
    """a, G, b, H, the frontier and whether every optimum in the range was interior."""
    grid = range_grid(flops_range)
    n_opt, d_opt, loss, interior = exact_optimum(params, fpt, grid)
    log_c = np.log(grid)
    a, log_g = np.polyfit(log_c, np.log(n_opt), 1)
    b, log_h = np.polyfit(log_c, np.log(d_opt), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.log(loss - params["E"])
    neg_gamma, log_k = np.polyfit(log_c, excess, 1) if np.isfinite(excess).all() else (np.nan, np.nan)
    return {"a": float(a), "b": float(b), "G": float(np.exp(log_g)), "H": float(np.exp(log_h)),
            "frontier": {"E": float(params["E"]), "A": float(np.exp(log_k)), "gamma": float(-neg_gamma)},
            "interior": bool(interior.all()), "flops_range": [float(grid[0]), float(grid[-1])]}


class Allocator:
    """Callable C -> (N_opt, D_opt, L_opt) for a fitted approach-3 law; kept on its FitResult."""

    def __init__(self, params: dict, fpt: FlopsPerToken):
        self.params = {k: float(params[k]) for k in ("E", "A", "B", "alpha", "beta")}
        self.fpt = fpt
        self._last = (None, None)   # N_opt, D_opt and L_opt are asked for one after another

    def __call__(self, flops):
        flops = np.asarray(flops, dtype=float)
        key = (flops.shape, flops.tobytes())
        if self._last[0] != key:
            n_opt, d_opt, loss, _ = exact_optimum(self.params, self.fpt, flops)
            self._last = (key, tuple(v.reshape(flops.shape) for v in (n_opt, d_opt, loss)))
        return self._last[1]
