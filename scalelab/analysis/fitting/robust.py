"""The one robust fitter of approach 3 and every law form: a sum of Huber losses of log residuals,
minimised from a grid of starts.

The objective, for parameters theta and runs r, is

    sum_r w_r * Huber_delta(log L_law(theta; N_r, D_r, ...) - log L_r)

(w = 1, or how often each run was drawn in a bootstrap resample). It is non-convex, and single
starts land on different, sometimes degenerate, stationary points, so every start of a grid is
run to convergence together (``batched_lbfgs``), and the best few distinct end points are
polished with scipy's L-BFGS-B at tight tolerances.

``HuberObjective`` evaluates it for many parameter rows at once; a law supplies the log
prediction and its gradient (``approach3.ChinchillaObjective``: Chinchilla's form in closed,
log-sum-exp arithmetic; ``law_fit.LawObjective``: any law form's expression).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.batched_lbfgs import minimize_batch

DEFAULT_DELTA = 1e-3  # Hoffmann et al. (2022)
CHUNK_ROWS = 256  # parameter rows evaluated at once: chunks keep the temporaries in cache

# The initialisation grid of Hoffmann et al. (2022) for (a, b, e, alpha, beta), A = e^a, B = e^b, E = e^e:
# 6 * 6 * 5 * 5 * 5 = 4500 starts
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_EXPONENT = (0.0, 0.5, 1.0, 1.5, 2.0)


def grid_starts(grids, n_starts: int | None = None, seed: int = 0) -> np.ndarray:
    """The product of one grid per parameter; a random subset of it, or it plus uniform points in its box."""
    grid = np.array(list(itertools.product(*grids)), dtype=float).reshape(-1, len(grids))
    if n_starts is None or n_starts == len(grid):
        return grid
    if n_starts < 1:
        raise AnalysisError(f"n_starts must be at least 1, got {n_starts}")
    rng = np.random.default_rng(seed)
    if n_starts < len(grid):
        return grid[np.sort(rng.choice(len(grid), size=n_starts, replace=False))]
    low, high = grid.min(axis=0), grid.max(axis=0)
    extra = rng.uniform(low, high, size=(n_starts - len(grid), grid.shape[1]))
    return np.vstack([grid, extra])


def huber_terms(residual, delta: float):
    """(Huber_delta(r), Huber'(r)) elementwise: Huber(r) = h'(r) (r - h'(r)/2), h'(r) = clip(r, +-delta)."""
    slope = np.clip(residual, -delta, delta)
    return slope * (residual - 0.5 * slope), slope


class HuberObjective:
    """The sum of Huber losses of log residuals for many parameter rows at once.

    Subclasses give ``_evaluate(theta_rows, weights_rows) -> (f, grad)``. ``weights`` (optional,
    K x R) weighs the runs, so that bootstrap resamples share one data set: each parameter row then
    carries one more column, the index of its weight row, whose gradient is 0 (the batched L-BFGS,
    which evaluates any subset of rows, never moves it)."""

    weights = None

    def __call__(self, theta):
        """(f, grad) for theta of shape (S, P) -> shapes (S,), (S, P)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=float))
        f = np.empty(len(theta))
        grad = np.empty(theta.shape)
        with np.errstate(all="ignore"):  # overflow or underflow gives f = inf or nan: the line search rejects it
            for lo in range(0, len(theta), CHUNK_ROWS):
                rows = slice(lo, lo + CHUNK_ROWS)
                if self.weights is None:
                    f[rows], grad[rows] = self._evaluate(theta[rows], None)
                else:
                    chunk = theta[rows]
                    f[rows], grad[rows, :-1] = self._evaluate(chunk[:, :-1], self.weights[chunk[:, -1].astype(int)])
        if self.weights is not None:
            grad[:, -1] = 0.0
        return f, grad

    def _evaluate(self, theta, weights):
        raise NotImplementedError

    def scalar(self, theta):
        f, g = self(np.asarray(theta, dtype=float)[None, :])
        return float(f[0]), g[0]


def polish(objective: HuberObjective, start, bounds=None) -> tuple[np.ndarray, float, bool, str]:
    """scipy L-BFGS-B from ``start`` with tight tolerances (within ``bounds``, a (low, high) pair per
    parameter, when given). Returns (x, f, converged, message)."""
    res = minimize(objective.scalar, np.asarray(start, dtype=float), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-14, "gtol": 1e-10,
                            "maxcor": 20})
    message = str(res.message)
    grad_small = np.max(np.abs(res.jac)) <= 1e-7 if res.jac is not None else False
    # Line-search stops at the resolution of floating point are fine if the gradient is ~0.
    converged = bool(np.all(np.isfinite(res.x)) and (res.success or grad_small))
    return res.x, float(res.fun), converged, message


def distinct_best(batch, n_polish: int) -> list:
    """The best distinct end points of the batch, within 2x of the best objective."""
    finite = np.isfinite(batch.f)
    order = np.argsort(np.where(finite, batch.f, np.inf))
    candidates = []
    worst_polished = 2.0 * batch.f[order[0]] + 1e-12   # polishing far worse basins is wasted time
    for i in order:
        if not finite[i] or batch.f[i] > worst_polished:
            break
        if any(np.max(np.abs(batch.x[i] - s)) < 1e-3 for s in candidates):
            continue
        candidates.append(batch.x[i])
        if len(candidates) >= n_polish:
            break
    return candidates


def best_fit(objective: HuberObjective, initial, n_polish: int, max_iter: int, bounds=None):
    """(theta, objective, converged, message, batch) of the best start after polishing."""
    batch = minimize_batch(objective, initial, max_iter=max_iter, ftol=1e-13)
    if not np.isfinite(batch.f).any():
        return None, np.inf, False, "the objective was not finite at any start", batch
    best = None
    for point in distinct_best(batch, n_polish):
        x, f, ok, message = polish(objective, point, bounds)
        if best is None or (ok and not best[2]) or (ok == best[2] and f < best[1]):
            best = (x, f, ok, message)
    return (*best, batch)
