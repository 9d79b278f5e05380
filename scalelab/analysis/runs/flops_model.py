"""C(N, D) = f(N) * D: the study's own FLOPs per token as a smooth function of N.

The analysis has no ledger, only the runs table, so f is measured from it:
each run's flops/tokens, the median per distinct N (a study has one shape per
size), and then ``log f`` interpolated linearly in ``log N`` through those
per-size values, extrapolated beyond the smallest and largest size with the
slope of the end segments. With one size, f is that size's value times
(N / N_size) (pure proportionality). This keeps every approach on the same C
as the table's ``flops`` column: a constant k in C = k*N*D would not be (small
models spend a larger share of their FLOPs on the output layer and attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalelab.analysis.errors import AnalysisError


@dataclass(frozen=True)
class FlopsPerToken:
    """Piecewise-linear log f(log N) through per-size knots, linear beyond the ends."""

    log_n: tuple
    log_f: tuple
    source: str = "the table's flops/tokens per run"

    def __post_init__(self):
        if len(self.log_n) < 1 or len(self.log_n) != len(self.log_f):
            raise AnalysisError("flops per token: needs at least one (N, flops/token) knot")

    def _slopes(self):
        x, y = np.asarray(self.log_n), np.asarray(self.log_f)
        if len(x) == 1:
            return x, y, 1.0, 1.0
        return x, y, (y[1] - y[0]) / (x[1] - x[0]), (y[-1] - y[-2]) / (x[-1] - x[-2])

    def log_value(self, log_n):
        """log f at log N (array in, array out)."""
        x, y, left, right = self._slopes()
        u = np.asarray(log_n, dtype=float)
        inside = np.interp(u, x, y) if len(x) > 1 else np.full_like(u, y[0])
        out = np.where(u < x[0], y[0] + left * (u - x[0]), inside)
        return np.where(u > x[-1], y[-1] + right * (u - x[-1]), out)

    def __call__(self, params):
        return np.exp(self.log_value(np.log(np.asarray(params, dtype=float))))

    def range_of_ratio(self) -> tuple[float, float]:
        """Smallest and largest f(N)/N at the knots (k in C = k*N*D if it were constant)."""
        ratio = np.exp(np.asarray(self.log_f) - np.asarray(self.log_n))
        return float(ratio.min()), float(ratio.max())

    def to_dict(self) -> dict:
        return {"params": [float(np.exp(v)) for v in self.log_n],
                "flops_per_token": [float(np.exp(v)) for v in self.log_f], "source": self.source,
                "model": "log(flops/token) linear in log N between sizes, end slopes beyond them"}

    def describe(self) -> str:
        low, high = self.range_of_ratio()
        if self.source.startswith("C = k"):
            return self.source
        return (f"C(N, D) = f(N)*D with f(N) = flops/tokens from the table, interpolated in log-log "
                f"through {len(self.log_n)} model size(s) and extrapolated with the end slopes "
                f"(f(N)/N from {low:.4g} to {high:.4g})")


def flops_per_token_model(table, k=None) -> FlopsPerToken:
    """f(N) measured from the table (``k`` given: exactly k*N, the C = k*N*D convention)."""
    params = table["params"].to_numpy(dtype=float)
    if k is not None:
        if not float(k) > 0:
            raise AnalysisError(f"k in C = k*N*D must be positive, got {k}")
        return FlopsPerToken((0.0, 1.0), (float(np.log(k)), float(np.log(k)) + 1.0),
                             source=f"C = k*N*D with k = {float(k):g} (given)")
    per_token = np.log(table["flops"].to_numpy(dtype=float) / table["tokens"].to_numpy(dtype=float))
    sizes, which = np.unique(np.log(params), return_inverse=True)
    medians = np.array([np.median(per_token[which == i]) for i in range(len(sizes))])
    return FlopsPerToken(tuple(map(float, sizes)), tuple(map(float, medians)))
