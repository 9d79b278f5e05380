"""Fit any law form (``law_forms``) with approach 3's robust fitter, and bootstrap it in one batch.

The objective is approach 3's: the sum over runs of Huber losses of the log residual
log L_law(theta) - log L. The same multi-start batched L-BFGS (``robust.best_fit``) takes every
start of the form's grid to a local minimum, and the best few are polished with L-BFGS-B within
the parameters' bounds (bounds also act as a quadratic penalty in the batched stage). Pinned
parameters (``fixed``) are constants of the expression.

The bootstrap of a law fit is batched too: every resample is a weight vector over the runs (how
often each run was drawn, the same draws as ``bootstrap.resample_runs``), and all resamples, each
from the full-data best plus a few grid starts, run in one batched L-BFGS. The jackknife (for BCa)
is the same with one group of runs weighted 0.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from scalelab.analysis.bootstrap import LEVEL, MAX_JACKKNIFE_GROUPS
from scalelab.analysis.conventions import base_conventions
from scalelab.analysis.fitting.batched_lbfgs import minimize_batch
from scalelab.analysis.fitting.forms import CHINCHILLA_NAMES, LawForm
from scalelab.analysis.fitting.law_files import law_from_dict
from scalelab.analysis.fitting.optimum import attach_allocation
from scalelab.analysis.fitting.robust import DEFAULT_DELTA, HuberObjective, best_fit, grid_starts, huber_terms
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.flops_model import flops_per_token_model

BOUND_PENALTY = 1e2
LOOSE_GTOL = 1e-5   # ill-conditioned forms (a scale against an exponent) stop L-BFGS-B's line search early
DEFAULT_BOOTSTRAP_STARTS = 32


class LawObjective(HuberObjective):
    """The robust fitter's objective (``robust.HuberObjective``) for a law form's expression;
    ``weights`` (optional, K x R) weighs the runs (bootstrap resamples)."""

    def __init__(self, form: LawForm, table, delta: float = DEFAULT_DELTA, fixed=None, weights=None):
        self.form, self.delta = form, float(delta)
        self.fixed = dict(fixed or {})
        self.free = [p for p in form.parameters if p.name not in self.fixed]
        self.expression = form.parsed
        self.env = {k: np.atleast_1d(v)[None, :] for k, v in form.variables_of(table).items()}
        self.log_l = np.log(np.asarray(table["loss"], dtype=float))[None, :]
        self.weights = None if weights is None else np.asarray(weights, dtype=float)
        self.bounds = [p.internal_bounds() for p in self.free]

    def log_predict(self, theta):
        """(log L of the law, its gradient d/d theta): shapes (S, R), (S, R, P)."""
        n_rows, n_free = theta.shape
        env, grads = dict(self.env), {}
        env.update(self.fixed)
        for j, p in enumerate(self.free):
            value = p.to_natural(theta[:, j:j + 1])
            g = np.zeros((n_rows, 1, n_free))
            g[:, 0, j] = value[:, 0] if p.scale == "log" else 1.0
            env[p.name], grads[p.name] = value, g
        value, grad = self.expression.value_and_grad(env, grads, n_free)
        shape = (n_rows, self.log_l.shape[1])
        value = np.broadcast_to(value, shape)
        grad = np.zeros(shape + (n_free,)) if grad is None else np.broadcast_to(grad, shape + (n_free,))
        return np.log(value), grad / value[..., None]

    def _evaluate(self, theta, weights):
        log_pred, dlog = self.log_predict(theta)
        residual = log_pred - self.log_l
        huber, slope = huber_terms(residual, self.delta)
        if weights is not None:
            huber, slope = huber * weights, slope * weights
        f = huber.sum(axis=1)
        grad = np.einsum("sr,srp->sp", slope, dlog)
        for j, (low, high) in enumerate(self.bounds):   # zero inside the bounds
            for bound, sign in ((low, -1.0), (high, 1.0)):
                if bound is not None:
                    excess = np.maximum(sign * (theta[:, j] - bound), 0.0)
                    f = f + BOUND_PENALTY * excess ** 2
                    grad[:, j] += 2 * BOUND_PENALTY * sign * excess
        return f, grad


def law_starts(objective: LawObjective, n_starts=None, seed: int = 0) -> np.ndarray:
    """The product of the free parameters' grids (a subset of ``n_starts``), clipped into the bounds."""
    grid = grid_starts([p.grid for p in objective.free], n_starts, seed)
    for j, (low, high) in enumerate(objective.bounds):
        grid[:, j] = np.clip(grid[:, j], -np.inf if low is None else low, np.inf if high is None else high)
    return grid


def fit_law(table, form: LawForm, fixed=None, n_starts: int | None = None, starts=None,
            delta: float = DEFAULT_DELTA, k=None, seed: int = 0, n_polish: int = 5, best_rtol: float = 1e-4,
            max_iter: int = 400, flops_range=None, fpt=None, **_ignored) -> FitResult:
    """Fit ``form`` (``fixed``: {name: natural value} pinned) to the runs of ``table``.

    ``starts`` (rows of the free parameters, in the fitted space) overrides the grid. The
    allocation (forms with the Chinchilla names) uses C(N, D) as approach 3 does.
    """
    fixed = dict(fixed or {})
    objective = LawObjective(form, table, delta, fixed)
    form.check(table, len(objective.free))
    initial = law_starts(objective, n_starts, seed) if starts is None else np.atleast_2d(np.asarray(starts, float))
    theta, f_best, converged, message, batch = best_fit(objective, initial, n_polish, max_iter, objective.bounds)
    label = f"law {form.name!r}"
    if theta is None:
        return FitResult(approach="3", converged=False, n_runs=len(table), message=f"{label}: {message}")
    largest = float(np.max(np.abs(objective.scalar(theta)[1])))
    if not converged and largest <= LOOSE_GTOL:   # a line search stopped by rounding, at a stationary point
        converged, message = True, f"{message} (accepted: largest gradient component {largest:.1e})"
    reached = batch.f <= f_best + best_rtol * abs(f_best) + 1e-15
    result = law_result(objective, theta, table, k, fpt, flops_range, converged)
    result.details.update({
        "objective": f_best, "n_starts": int(len(initial)), "n_reached_best": int(reached.sum()),
        "best_tolerance": f"objective within {best_rtol:g} (relative) of the best",
        "batch_iterations": batch.iterations, "batch_converged_starts": int(batch.converged.sum()),
        "polish": message})
    if not converged:
        result.converged = False
        result.message = f"{label}: L-BFGS-B did not converge from the best starts ({message})"
    return result


def law_result(objective: LawObjective, theta, table, k, fpt, flops_range, converged: bool = True) -> FitResult:
    """The FitResult of the fitted vector ``theta`` (free parameters, fitted space)."""
    form = objective.form
    values = dict(objective.fixed)
    values.update({p.name: float(p.to_natural(t)) for p, t in zip(objective.free, theta, strict=True)})
    values = {name: values[name] for name in form.names}
    params = form.reported(values)
    conventions = base_conventions()
    details = {"objective_form": "sum of Huber losses of log residuals", "huber_delta": objective.delta,
               "law": form.to_dict(objective.fixed), "law_expression": form.expression,
               "fixed": dict(objective.fixed), "theta": {p.name: float(t) for p, t in zip(objective.free, theta)},
               "loss_min": float(table["loss"].min())}
    result = FitResult(approach="3", converged=converged, n_runs=len(table), params=params,
                       conventions=conventions, details=details, law=law_from_dict(details["law"]))
    if form.frontier:
        result.frontier = {key: params[name] for key, name in form.frontier.items()}
    if not converged or not form.allocates:
        return result
    if not set(CHINCHILLA_NAMES) <= set(params):
        return _allocate_any(result, form, values, table, k, fpt, flops_range)
    if not (params["alpha"] > 1e-6 and params["beta"] > 1e-6 and np.isfinite([params[n] for n in CHINCHILLA_NAMES]).all()):
        result.converged = False
        result.message = (f"law {form.name!r}: the best fit is degenerate (alpha = {params['alpha']:.3g}, "
                          f"beta = {params['beta']:.3g}); no compute-optimal allocation follows from it")
        return result
    fpt = flops_per_token_model(table, k) if k is not None or fpt is None else fpt
    conventions["C(N, D)"] = fpt.describe()
    details["flops_per_token"] = fpt.to_dict()
    details["k"] = float(k) if k is not None else float(np.median(table["flops"] / (table["params"] * table["tokens"])))
    details["k_note"] = "k = flops/(N*D): given, or the table's median for reference; the allocation uses C(N, D)"
    attach_allocation(result, fpt, flops_range or (table["flops"].min(), table["flops"].max()))
    return result


def _allocate_any(result: FitResult, form: LawForm, values: dict, table, k, fpt, flops_range) -> FitResult:
    """The compute-optimal allocation of a law of N and D without the Chinchilla terms (found numerically
    under the same C(N, D) as approach 3's); its frontier is written over the form's floor (0 without one)."""
    exponents = {name: v for name, v in result.params.items() if name.startswith("alpha")}
    if not all(np.isfinite(v) and v > 1e-6 for v in exponents.values()):
        result.converged = False
        result.message = (f"law {form.name!r}: the best fit is degenerate ({', '.join(f'{n} = {v:.3g}' for n, v in exponents.items())}); "
                          "no compute-optimal allocation follows from it")
        return result
    fpt = flops_per_token_model(table, k) if k is not None or fpt is None else fpt
    result.conventions["C(N, D)"] = fpt.describe()
    result.details["flops_per_token"] = fpt.to_dict()
    floor = float(values[form.floor]) if form.floor else 0.0

    def loss_fn(n, d):
        return form.predict(values, {"params": n, "tokens": d})

    attach_allocation(result, fpt, flops_range or (table["flops"].min(), table["flops"].max()), loss_fn, floor)
    return result


def _extra_starts(options: dict) -> int:
    extra = options.get("bootstrap_starts")
    return DEFAULT_BOOTSTRAP_STARTS if extra is None else int(extra)


def resample_weights(n_runs: int, resamples: int, seed: int) -> np.ndarray:
    """How often each run is drawn in each resample: the draws of ``bootstrap.resample_runs``."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, n_runs, size=n_runs), minlength=n_runs)
                     for _ in range(resamples)]).astype(float) if resamples else np.zeros((0, n_runs))


def jackknife_weights(n_runs: int, seed: int) -> np.ndarray:
    """One row per left-out group (the groups of ``bootstrap.run_jackknife``)."""
    groups = np.array_split(np.random.default_rng(seed).permutation(n_runs), min(n_runs, MAX_JACKKNIFE_GROUPS))
    weights = np.ones((len(groups), n_runs))
    for i, group in enumerate(groups):
        weights[i, group] = 0.0
    return weights


def fit_weighted(result: FitResult, form: LawForm, table, weights, options: dict) -> list:
    """The law refitted under each row of ``weights``, in one batch: a FitResult, or why it failed."""
    fixed = result.details.get("fixed", {})
    probe = LawObjective(form, table, options.get("delta", DEFAULT_DELTA), fixed)
    best = np.array([result.details["theta"][p.name] for p in probe.free])
    extra = _extra_starts(options)
    starts = np.vstack([best, law_starts(probe, extra, options.get("seed", 0) + 1)]) if extra else best[None, :]
    per = len(starts)
    objective = LawObjective(form, table, probe.delta, fixed, weights)
    rows = np.column_stack([np.tile(starts, (len(weights), 1)), np.repeat(np.arange(len(weights)), per)])
    batch = minimize_batch(objective, rows, max_iter=int(options.get("max_iter") or 400), ftol=1e-13)
    out = []
    for i in range(len(weights)):
        mine = slice(i * per, (i + 1) * per)
        f = np.where(np.isfinite(batch.f[mine]), batch.f[mine], np.inf)
        j = int(np.argmin(f))
        if not np.isfinite(f[j]):
            out.append("the objective was not finite at any start")
            continue
        fit = law_result(probe, batch.x[mine][j, :-1], table[weights[i] > 0], options.get("k"), options.get("fpt"),
                         options.get("flops_range"), bool(batch.converged[mine][j]))
        if not fit.converged or (form.allocates and not np.isfinite([fit.a, fit.b]).all()):
            out.append(fit.message or f"did not converge in {batch.iterations} batched L-BFGS iterations")
        else:
            out.append(fit)
    return out


def bootstrap_law(result: FitResult, form: LawForm, table, resamples: int, seed: int, options: dict):
    """(bootstrap fits, jackknife fits, info) of a law fit, as ``bootstrap.run_bootstrap`` reports them."""
    n = len(table)
    weights = resample_weights(n, resamples, seed)
    if options.get("jackknife", True):
        weights = np.vstack([weights, jackknife_weights(n, seed)])
    both = fit_weighted(result, form, table, weights, options)   # one batch for both
    fits = [f for f in both[:resamples] if isinstance(f, FitResult)]
    jackknife = [f for f in both[resamples:] if isinstance(f, FitResult)] if fits else []
    reasons = Counter(f for f in both[:resamples] if isinstance(f, str))
    info = {"requested": resamples, "succeeded": len(fits), "failed": resamples - len(fits),
            "fraction_fitted": len(fits) / resamples if resamples else float("nan"),
            "failure_reasons": dict(reasons.most_common(5)), "level": LEVEL, "seed": seed,
            "method": "runs resampled with replacement (as run weights, all resamples in one batched L-BFGS)",
            "starts_per_resample": f"the full-data best plus {_extra_starts(options)} grid starts"}
    return fits, jackknife, info
