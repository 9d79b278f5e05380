"""Bootstrap: refit on runs resampled with replacement, percentile intervals.

Fail-soft: a resample whose fit raises AnalysisError or does not converge is
counted (with its reason) and left out of the intervals.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd

from .errors import AnalysisError

LEVEL = 0.95


def resample_runs(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Runs drawn with replacement, as many as the table has."""
    idx = rng.integers(0, len(table), size=len(table))
    return table.iloc[idx].reset_index(drop=True)


def run_bootstrap(fit_once, table: pd.DataFrame, resamples: int, seed: int = 0):
    """Fit ``fit_once(sample, i)`` on ``resamples`` resamples.

    Returns (list of converged FitResults, info dict with requested/succeeded/failed and reasons).
    """
    rng = np.random.default_rng(seed)
    fits, reasons = [], Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # dropped budgets etc. would repeat once per resample
        for i in range(resamples):
            sample = resample_runs(table, rng)
            try:
                result = fit_once(sample, i)
            except AnalysisError as exc:
                reasons[_short(str(exc))] += 1
                continue
            except (FloatingPointError, np.linalg.LinAlgError, ValueError) as exc:
                reasons[f"{type(exc).__name__}: {_short(str(exc))}"] += 1
                continue
            if result.converged:
                fits.append(result)
            else:
                reasons[_short(result.message or "did not converge")] += 1
    failed = resamples - len(fits)
    info = {"requested": resamples, "succeeded": len(fits), "failed": failed,
            "failure_reasons": dict(reasons.most_common(5)), "level": LEVEL, "seed": seed,
            "method": "runs resampled with replacement; percentile intervals"}
    return fits, info


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def percentile_interval(values, level: float = LEVEL):
    """(low, high) percentile interval of the finite values; (nan, nan) if fewer than 2."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def intervals(samples: list[dict], level: float = LEVEL) -> dict:
    """Interval for every key present in the sample dicts."""
    keys = sorted({k for s in samples for k in s})
    return {k: percentile_interval([s.get(k, np.nan) for s in samples], level) for k in keys}
