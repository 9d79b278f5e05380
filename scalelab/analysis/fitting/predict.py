"""Predicted losses of a parametric fit, with bootstrap intervals.

Two intervals, both 95% by default:

* ``interval``: the uncertainty of the law's mean loss at a point from the uncertainty of its
  parameters -- the percentile interval of the law evaluated at every bootstrap resample's
  parameters (``bootstrap.param_samples`` of the fit). It is the interval to set against a
  noiseless truth or the mean of many seeds.
* ``prediction_interval``: the same widened by the runs' own scatter -- percentiles of
  L_b(x) * exp(-r_j) over every resample b and every log residual r_j of the fitted runs
  (``details.log_residuals``). It is the interval for one new run at that point (what a held-out
  run is checked against).

Works from a FitResult or from the JSON ``fit --json`` writes (approach 3, any law form).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalelab.analysis.bootstrap import LEVEL
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.forms import BUILTIN
from scalelab.analysis.fitting.law_files import law_from_dict


def law_and_params(fit: dict):
    """(LawForm, point parameters, bootstrap parameter samples) of a fit dict."""
    if fit.get("approach") != "3":
        raise AnalysisError(f"predict needs a parametric L(N, D) fit (approach 3 or a --law form); this fit is "
                            f"approach {fit.get('approach')!r}, whose predictions are only its frontier L(C)")
    if not fit.get("converged"):
        raise AnalysisError(f"the fit did not converge ({fit.get('message')}): it predicts nothing")
    details = fit.get("details") or {}
    form = law_from_dict(details["law"]) if details.get("law") else BUILTIN["chinchilla"]
    samples = (fit.get("bootstrap") or {}).get("param_samples") or []
    return form, dict(fit["params"]), samples


def predict_many(form, samples: list[dict], data) -> np.ndarray:
    """(B, R): the law at the rows of ``data`` for each of B parameter dicts, in one evaluation."""
    if not samples:
        return np.zeros((0, len(data)))
    env = {k: np.atleast_1d(v)[None, :] for k, v in form.variables_of(data).items()}
    for name in form.names:
        env[name] = np.array([float(s[name]) for s in samples])[:, None]
    return np.asarray(form.parsed.value(env), dtype=float)


def _tails(level: float) -> tuple[float, float]:
    return 100 * (1 - level) / 2, 100 * (1 + level) / 2


def intervals_at(fit: dict, data, level: float = LEVEL, repeats: int = 1) -> list[dict]:
    """One row per point: predicted loss, interval (mean) and prediction_interval (one run, or the
    mean of ``repeats`` runs: the log-residual scatter shrunk by sqrt(repeats))."""
    form, params, samples = law_and_params(fit)
    table = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    predicted = np.atleast_1d(form.predict(params, table)) * np.ones(len(table))
    draws = mean_draws(fit, table)
    spread = predictive_draws(fit, table, repeats, draws)
    low, high = _tails(level)
    rows = []
    for j, (_, point) in enumerate(table.iterrows()):
        row = {k: (float(v) if isinstance(v, (int, float, np.number)) else v) for k, v in point.items()}
        row["predicted"] = float(predicted[j])
        if len(draws) >= 2:
            row["interval"] = [float(v) for v in np.percentile(draws[:, j], [low, high])]
            if spread is not None:
                row["prediction_interval"] = [float(v) for v in np.percentile(spread[:, j], [low, high])]
        rows.append(row)
    return rows


def mean_draws(fit: dict, table: pd.DataFrame) -> np.ndarray:
    """(resamples, points): the law's mean loss at each bootstrap resample's parameters (finite ones)."""
    form, _, samples = law_and_params(fit)
    draws = np.broadcast_to(predict_many(form, samples, table), (len(samples), len(table)))
    return draws[np.all(np.isfinite(draws), axis=1)]


def predictive_draws(fit: dict, table: pd.DataFrame, repeats: int = 1, draws=None) -> np.ndarray | None:
    """(draws, points): the loss of the mean of ``repeats`` new runs, each resample's mean times each
    fitted run's log residual shrunk by sqrt(repeats); None without resamples or residuals.
    ``draws``: the resamples' means at ``table`` when already computed (``mean_draws``)."""
    draws = mean_draws(fit, table) if draws is None else draws
    residuals = np.asarray(((fit.get("details") or {}).get("log_residuals")) or [], dtype=float)
    if len(draws) < 2 or not len(residuals):
        return None
    scatter = np.exp(-residuals / np.sqrt(max(int(repeats), 1)))
    return (draws[:, None, :] * scatter[None, :, None]).reshape(-1, draws.shape[1])


def prediction_note(fit: dict) -> str:
    samples = len((fit.get("bootstrap") or {}).get("param_samples") or [])
    if samples < 2:
        return "no interval: the fit has no bootstrap parameter samples (fit again with --bootstrap K)"
    return (f"interval: 95% percentile interval of the law's mean at the {samples} bootstrap resamples' "
            "parameters; prediction_interval: also the fitted runs' log-residual scatter (one new run)")


def log_residuals(result, table) -> list[float]:
    """log predicted - log observed loss of the fitted runs."""
    with np.errstate(all="ignore"):
        return [float(v) for v in np.log(np.atleast_1d(result.predict_table(table))) - np.log(table["loss"])]


def fit_quality(result, table, free: int) -> dict:
    """RMS log residual and AIC (n log(mean squared log residual) + 2 x `free` parameters) of a fit on
    the runs of `table`: what `law="auto"` and a rung's rival forms are compared by."""
    residuals = np.asarray(log_residuals(result, table), dtype=float)
    return {"rms_log_residual": float(np.sqrt(np.mean(residuals ** 2))),
            "aic": float(len(residuals) * np.log(np.mean(residuals ** 2)) + 2 * free)}


def mark_intervals(result, held, repeats: int = 1) -> None:
    """Add each held-out run's intervals, and whether its loss falls inside them, to ``result.holdout``
    (``repeats``: each held-out loss is the mean of that many runs)."""
    fit = {"approach": result.approach, "converged": result.converged, "params": result.params,
           "details": result.details, "bootstrap": result.bootstrap, "message": result.message}
    rows = intervals_at(fit, held.reset_index(drop=True), repeats=repeats)
    for out, row in zip(result.holdout, rows, strict=True):
        for key in ("interval", "prediction_interval"):
            if key in row:
                out[key] = row[key]
                out[f"inside_{key}"] = bool(row[key][0] <= out["loss"] <= row[key][1])
