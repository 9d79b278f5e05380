"""Bootstrap: refit on resampled data; BCa intervals with jackknife acceleration.

Fail-soft: a resample whose fit raises AnalysisError or does not converge is
counted (with its reason) and left out of the intervals. Resampling is by
runs with replacement unless the caller passes its own ``resampler`` (approach 2
resamples parabola residuals instead, keeping every budget's sizes).

Intervals are bias-corrected and accelerated (BCa, Efron 1987): the bias
correction z0 comes from the share of resamples below the full-data estimate,
the acceleration from a (grouped) delete-one jackknife of the same fit. Where
BCa is undefined (every resample on one side of the estimate, too few
resamples) the percentile interval is used and the reason noted.
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pandas as pd
from scipy.stats import norm

from scalelab.analysis.errors import AnalysisError

LEVEL = 0.95
MIN_FOR_BCA = 10
MAX_JACKKNIFE_GROUPS = 20


def resample_runs(table: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Runs drawn with replacement, as many as the table has."""
    idx = rng.integers(0, len(table), size=len(table))
    return table.iloc[idx].reset_index(drop=True)


def _attempt(fit_once, sample, i, reasons: Counter):
    """The converged fit of one sample, or None with the reason counted."""
    try:
        result = fit_once(sample, i)
    except AnalysisError as exc:
        reasons[_short(str(exc))] += 1
        return None
    except (FloatingPointError, np.linalg.LinAlgError, ValueError) as exc:
        reasons[f"{type(exc).__name__}: {_short(str(exc))}"] += 1
        return None
    if result.converged and np.isfinite([result.a, result.b]).all():
        return result
    reasons[_short(result.message or "did not converge")] += 1
    return None


def run_bootstrap(fit_once, table: pd.DataFrame, resamples: int, seed: int = 0, resampler=None,
                  method: str = "runs resampled with replacement"):
    """Fit ``fit_once(sample, i)`` on ``resamples`` resamples.

    Returns (list of converged FitResults, info dict with requested/succeeded/failed and reasons).
    """
    rng = np.random.default_rng(seed)
    resampler = resampler or resample_runs
    fits, reasons = [], Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # dropped budgets etc. would repeat once per resample
        for i in range(resamples):
            result = _attempt(fit_once, resampler(table, rng), i, reasons)
            if result is not None:
                fits.append(result)
    failed = resamples - len(fits)
    info = {"requested": resamples, "succeeded": len(fits), "failed": failed,
            "fraction_fitted": len(fits) / resamples if resamples else float("nan"),
            "failure_reasons": dict(reasons.most_common(5)), "level": LEVEL, "seed": seed,
            "method": method}
    return fits, info


def run_jackknife(fit_once, table: pd.DataFrame, seed: int = 0) -> list:
    """Converged fits with one group of runs left out each (delete-one up to 20 runs, then 20 groups)."""
    n = len(table)
    groups = np.array_split(np.random.default_rng(seed).permutation(n), min(n, MAX_JACKKNIFE_GROUPS))
    fits, reasons = [], Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, group in enumerate(groups):
            sample = table.drop(index=table.index[group]).reset_index(drop=True)
            result = _attempt(fit_once, sample, i, reasons)
            if result is not None:
                fits.append(result)
    return fits


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[np.isfinite(values)]


def percentile_interval(values, level: float = LEVEL):
    """(low, high) percentile interval of the finite values; (nan, nan) if fewer than 2."""
    values = _finite(values)
    if len(values) < 2:
        return (float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def acceleration(jackknife) -> float | None:
    """BCa acceleration from jackknife estimates (None with fewer than 3 or no spread)."""
    values = _finite(jackknife if jackknife is not None else [])
    if len(values) < 3:
        return None
    d = values.mean() - values
    scale = float(np.max(np.abs(d)))
    if not 0 < scale < np.inf:
        return None
    d = d / scale  # the acceleration is scale-free; this keeps d**3 finite for jackknife values like 1e126
    accel = float(np.sum(d ** 3) / (6.0 * float(np.sum(d ** 2)) ** 1.5))
    return accel if np.isfinite(accel) else None


def bca_interval(values, estimate, jackknife=None, level: float = LEVEL):
    """((low, high), method) with method 'BCa', or 'percentile: <why BCa was not possible>'."""
    values = _finite(values)
    if len(values) < 2:
        return (float("nan"), float("nan")), "none: fewer than 2 resamples fitted"
    fallback = percentile_interval(values, level)
    if len(values) < MIN_FOR_BCA or not np.isfinite(estimate):
        return fallback, f"percentile: BCa needs {MIN_FOR_BCA} fitted resamples and a finite estimate"
    below = float(np.mean(values < estimate) + 0.5 * np.mean(values == estimate))
    if not 0.0 < below < 1.0:
        return fallback, "percentile: every resample lies on one side of the estimate, so BCa is undefined"
    z0 = float(norm.ppf(below))
    accel = acceleration(jackknife)
    z = norm.ppf([(1 - level) / 2, (1 + level) / 2])
    shifted = z0 + z
    denominator = 1.0 - (accel or 0.0) * shifted
    if np.any(denominator <= 0):
        return fallback, "percentile: the jackknife acceleration is too large for BCa"
    quantiles = norm.cdf(z0 + shifted / denominator)
    if not np.all(np.isfinite(quantiles)):
        return fallback, "percentile: the BCa quantiles are not finite"
    low, high = np.quantile(values, quantiles)
    method = "BCa" if accel is not None else "BCa without acceleration (jackknife failed)"
    return (float(low), float(high)), method


def intervals(samples: list[dict], estimates: dict, jackknife: list[dict] | None = None,
              level: float = LEVEL) -> tuple[dict, dict]:
    """({key: (low, high)}, {key: method}) for every key of the sample dicts."""
    keys = sorted({k for s in samples for k in s})
    out, methods = {}, {}
    for key in keys:
        jack = [j.get(key, np.nan) for j in jackknife] if jackknife else None
        out[key], methods[key] = bca_interval([s.get(key, np.nan) for s in samples],
                                              estimates.get(key, np.nan), jack, level)
    return out, methods
