"""Power-law helpers shared by the fits.

* ``fit_power_law``: y = G * x^a, a straight line in log-log space.
* ``fit_saturating_law``: y = E + A * x^(-gamma), fitted on log residuals from
  a small grid of starts (used for L(N), L(D), L(C) frontiers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from scalelab.analysis.errors import AnalysisError


@dataclass
class PowerLaw:
    """y = coefficient * x ** exponent."""

    coefficient: float
    exponent: float

    def __call__(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** self.exponent


def fit_power_law(x, y, what: str = "power law") -> PowerLaw:
    """Least-squares line through (log x, log y)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    if len(np.unique(x)) < 2:
        raise AnalysisError(f"{what}: needs points at 2 or more distinct x values, got {len(np.unique(x))}")
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return PowerLaw(coefficient=float(np.exp(intercept)), exponent=float(slope))


@dataclass
class SaturatingLaw:
    """y = E + A * x ** (-gamma); also written E + (xc / x) ** gamma with xc = A ** (1/gamma)."""

    E: float
    A: float
    gamma: float
    converged: bool = True
    message: str = ""
    at_bound: tuple = ()   # names of parameters the optimiser left at a bound

    def __call__(self, x):
        return self.E + self.A * np.asarray(x, dtype=float) ** (-self.gamma)

    @property
    def xc(self) -> float:
        """The Kaplan-style scale: (xc / x) ** gamma == A * x ** -gamma."""
        with np.errstate(over="ignore", divide="ignore"):
            return float(np.exp(np.log(self.A) / self.gamma)) if self.gamma > 0 else float("nan")

    def solve(self, y: float) -> float:
        """The x where the law reaches y (inf when y is at or below E)."""
        if y <= self.E:
            return float("inf")
        return float((self.A / (y - self.E)) ** (1.0 / self.gamma))


def _profile_starts(u, y, y_min, n_grid: int = 40, keep: int = 2):
    """Good starts (e_frac, log A, gamma): for each trial E, log(y - E) is a line in u."""
    starts = []
    for e_frac in np.linspace(0.0, 0.98, n_grid):
        E = y_min * e_frac
        slope, intercept = np.polyfit(u, np.log(y - E), 1)
        gamma = float(np.clip(-slope, 1e-5, 19.0))
        log_a = float(np.clip(intercept, -49.0, 49.0))
        with np.errstate(all="ignore"):
            cost = float(np.sum((np.log(E + np.exp(log_a - gamma * u)) - np.log(y)) ** 2))
        starts.append((cost if np.isfinite(cost) else np.inf, (float(e_frac), log_a, gamma)))
    starts.sort(key=lambda item: item[0])
    chosen = [starts[0][1]]
    for _, start in starts[1:]:
        if len(chosen) >= keep:
            break
        if abs(start[0] - chosen[-1][0]) > 0.2:   # a second, different basin if there is one
            chosen.append(start)
    return chosen


BOUNDS = ((0.0, 0.999999), (-50.0, 50.0), (1e-6, 20.0))
BOUND_NAMES = (("E at 0", "E at the lowest loss"), ("A at its lower bound", "A at its upper bound"),
               ("gamma at 0", "gamma at its upper bound 20"))


def _at_bound(theta, rtol: float = 1e-6) -> tuple:
    names = []
    for value, (low, high), (low_name, high_name) in zip(theta, BOUNDS, BOUND_NAMES, strict=True):
        span = (high - low) * rtol
        if value <= low + span:
            names.append(low_name)
        elif value >= high - span:
            names.append(high_name)
    return tuple(names)


def fit_saturating_law(x, y, what: str = "law", min_points: int = 3) -> SaturatingLaw:
    """Fit y = E + A x^-gamma (E >= 0, gamma > 0) minimising squared log residuals.

    x is rescaled by its geometric mean for conditioning. Several starts are
    tried and the best kept; ``converged`` is False when none succeeded.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    distinct = len(np.unique(x))
    if distinct < min_points:
        raise AnalysisError(
            f"{what}: fitting E + A*x^-gamma needs at least {min_points} points at distinct x, got {distinct}")
    log_ref = float(np.mean(np.log(x)))
    u = np.log(x) - log_ref            # log of x / x_ref
    log_y = np.log(y)
    y_min = float(y.min())

    def parts(theta):
        e_frac, log_a, gamma = theta
        term = np.exp(np.minimum(log_a - gamma * u, 700.0))
        return term, y_min * e_frac + term

    def residuals(theta):
        return np.log(parts(theta)[1]) - log_y

    def jacobian(theta):
        term, total = parts(theta)
        return np.column_stack([y_min / total, term / total, -u * term / total])

    best = None
    for start in _profile_starts(u, y, y_min):
        try:
            with np.errstate(all="ignore"):
                res = least_squares(residuals, start, jac=jacobian,
                                    bounds=tuple(zip(*BOUNDS, strict=True)),
                                    xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=2000)
        except (ValueError, FloatingPointError):
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None or not np.all(np.isfinite(best.x)):
        return SaturatingLaw(np.nan, np.nan, np.nan, converged=False,
                             message=f"{what}: the optimizer failed from every start")
    e_frac, log_a, gamma = best.x
    A = float(np.exp(log_a + gamma * log_ref))
    law = SaturatingLaw(E=float(y_min * e_frac), A=A, gamma=float(gamma),
                        converged=bool(best.status > 0 and np.isfinite(A)), at_bound=_at_bound(best.x))
    if not law.converged:
        law.message = f"{what}: {best.message}"
    return law
