"""Compute-optimal allocation of L(N, D) = E + A/N^alpha + B/D^beta (or any law of N and D) under C = f(N)*D.

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

from scalelab.analysis.runs.flops_model import FlopsPerToken

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
    log_c = np.log(np.atleast_1d(np.asarray(flops, dtype=float)))
    with np.errstate(all="ignore"):
        centre = _guess(params, fpt, log_c)
    log_n, interior = search_min(lambda lc, ln: _objective(params, fpt, lc, ln), log_c, centre,
                                 float(np.mean(fpt.log_n)))
    loss = params["E"] + _objective(params, fpt, log_c, log_n)
    return np.exp(log_n), np.exp(log_c - fpt.log_value(log_n)), loss, interior


def search_min(objective, log_c, centre, fallback: float):
    """(log N_opt, interior): ``objective(log_c, log_n)`` minimised over log N for each budget, on a
    dense grid around ``centre`` (+-GRID_HALF_WIDTH nats) refined by golden-section search."""
    centre = np.clip(np.where(np.isfinite(centre), centre, fallback), -50.0, 80.0)[:, None]
    offsets = np.linspace(-GRID_HALF_WIDTH, GRID_HALF_WIDTH, GRID_POINTS)[None, :]
    with np.errstate(all="ignore"):
        values = objective(log_c[:, None], centre + offsets)
    best = np.argmin(np.where(np.isfinite(values), values, np.inf), axis=1)
    interior = (best > 0) & (best < GRID_POINTS - 1)
    step = offsets[0, 1] - offsets[0, 0]
    low = centre[:, 0] + offsets[0, np.clip(best - 1, 0, None)]
    high = low + 2 * step
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(GOLDEN_STEPS):   # golden section, vectorised over the budgets
        left, right = high - ratio * (high - low), low + ratio * (high - low)
        with np.errstate(all="ignore"):
            keep_left = objective(log_c, left) < objective(log_c, right)
        high = np.where(keep_left, right, high)
        low = np.where(keep_left, low, left)
    return 0.5 * (low + high), interior


def law_optimum(loss_fn, fpt: FlopsPerToken, flops):
    """(N_opt, D_opt, L_opt, interior) of any law ``loss_fn(N, D)`` (arrays in, loss out) under C = f(N)*D.

    With no closed form to start from, the grid is centred on 20 tokens per parameter; its +-9 nats
    (a factor 8000 either side in N) hold any optimum a law fitted to a study can place.
    """
    log_c = np.log(np.atleast_1d(np.asarray(flops, dtype=float)))
    middle = float(np.mean(fpt.log_n))
    log_k = float(fpt.log_value(middle)) - middle
    centre = 0.5 * (log_c - log_k - np.log(20.0))

    def objective(lc, ln):
        return loss_fn(np.exp(ln), np.exp(lc - fpt.log_value(ln)))

    log_n, interior = search_min(objective, log_c, centre, middle)
    return np.exp(log_n), np.exp(log_c - fpt.log_value(log_n)), objective(log_c, log_n), interior


def range_grid(flops_range, points: int = RANGE_POINTS) -> np.ndarray:
    low, high = (float(v) for v in flops_range)
    if not high > low:
        high = low * 1.0001
    return np.logspace(np.log10(low), np.log10(high), points)


def allocation_laws(params: dict, fpt: FlopsPerToken, flops_range, loss_fn=None, floor: float = 0.0) -> dict:
    """a, G, b, H, the frontier and whether every optimum in the range was interior.

    The Chinchilla law by default (``params``); any law of N and D with ``loss_fn(N, D)``, whose
    frontier is written over its ``floor`` (the loss it tends to with N and D unbounded).
    """
    grid = range_grid(flops_range)
    if loss_fn is None:
        n_opt, d_opt, loss, interior = exact_optimum(params, fpt, grid)
        floor = params["E"]
    else:
        n_opt, d_opt, loss, interior = law_optimum(loss_fn, fpt, grid)
    log_c = np.log(grid)
    a, log_g = np.polyfit(log_c, np.log(n_opt), 1)
    b, log_h = np.polyfit(log_c, np.log(d_opt), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.log(loss - floor)
    neg_gamma, log_k = np.polyfit(log_c, excess, 1) if np.isfinite(excess).all() else (np.nan, np.nan)
    return {"a": float(a), "b": float(b), "G": float(np.exp(log_g)), "H": float(np.exp(log_h)),
            "frontier": {"E": float(floor), "A": float(np.exp(log_k)), "gamma": float(-neg_gamma)},
            "interior": bool(interior.all()), "flops_range": [float(grid[0]), float(grid[-1])]}


class Allocator:
    """Callable C -> (N_opt, D_opt, L_opt) for a fitted approach-3 law; kept on its FitResult.

    The Chinchilla law from ``params``, or any law of N and D given as ``loss_fn(N, D)``.
    """

    def __init__(self, params: dict, fpt: FlopsPerToken, loss_fn=None):
        self.params = None if loss_fn else {k: float(params[k]) for k in ("E", "A", "B", "alpha", "beta")}
        self.loss_fn = loss_fn
        self.fpt = fpt
        self._last = (None, None)   # N_opt, D_opt and L_opt are asked for one after another

    def __call__(self, flops):
        flops = np.asarray(flops, dtype=float)
        key = (flops.shape, flops.tobytes())
        if self._last[0] != key:
            if self.loss_fn is None:
                n_opt, d_opt, loss, _ = exact_optimum(self.params, self.fpt, flops)
            else:
                n_opt, d_opt, loss, _ = law_optimum(self.loss_fn, self.fpt, flops)
            self._last = (key, tuple(v.reshape(flops.shape) for v in (n_opt, d_opt, loss)))
        return self._last[1]


def attach_allocation(result, fpt, flops_range, loss_fn=None, floor: float = 0.0) -> None:
    """Exponents, frontier and the exact allocator of a converged approach-3 fit: the Chinchilla law of
    ``result.params``, or any law of N and D given as ``loss_fn(N, D)`` (minimised numerically; its
    frontier is written over ``floor``)."""
    p = result.params
    laws = allocation_laws(p, fpt, flops_range, loss_fn, floor)
    result.a, result.b, result.G, result.H = laws["a"], laws["b"], laws["G"], laws["H"]
    result.frontier = laws["frontier"]
    result.allocate = Allocator(p, fpt, loss_fn)
    result.details.update({"allocation_range": laws["flops_range"], "interior_optimum": laws["interior"]})
    if loss_fn is None:
        result.details["a_under_constant_k"] = p["beta"] / (p["alpha"] + p["beta"])
    how = "exactly" if loss_fn is None else "numerically"
    over = "E" if loss_fn is None else (f"{floor:.4g} (the law's floor)" if floor else "0 (the law has no floor)")
    result.details["exponents_note"] = (
        f"a, b: slopes of log N_opt, log D_opt vs log C over the allocation range, with N_opt minimising "
        f"L(N, C/f(N)) {how}; frontier: {over} + K*C^-gamma fitted to the loss along that optimal allocation")
