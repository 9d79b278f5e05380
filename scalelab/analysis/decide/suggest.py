"""The next runs worth buying: candidate (N, D) runs ranked by how much each shrinks the interval of
a fitted law's prediction at a target, per FLOP, and a greedy pick within a FLOP budget.

The shrinkage is estimated, not refitted (cheap and deterministic): at the fitted parameters theta
(free ones, in the fitted space: logs of positive parameters), J is the Gauss-Newton Jacobian of
log L_law over the fitted runs, and the parameters' covariance is s^2 * h * (J^T J)^-1, with s^2 the
residual variance of the fit's log residuals (sum r^2 / (runs - free parameters)) and h the Huber
factor E[psi^2] / E[psi']^2 / s^2 for Gaussian residuals of that scale at the fit's Huber delta
(1 for least squares; near pi/2 when delta is far below the noise, as the published 1e-3 is for 1%
noise, which makes the fit nearly an L1 fit).
The target's log loss has variance g^T Cov g (the delta method; g the gradient of log L at the
target). A candidate x adds j_x j_x^T to J^T J (one more run, the same noise), so its effect on the
target's variance follows from the Sherman-Morrison formula, for every candidate at once. The
interval is the 95% interval of the law's mean, L * exp(+-z * sd), as ``predict``'s ``interval``
(there from the bootstrap). Greedy: repeatedly take the affordable candidate with the largest
shrinkage of that interval's width per FLOP, update J^T J, and stop when nothing affordable helps;
this is also run from each of the 16 best single candidates as a forced first pick, keeping the
narrowest end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from scalelab.analysis.bootstrap import LEVEL
from scalelab.analysis.decide.candidates import (
    DEFAULT_TOKENS_PER_PARAM,
    Candidate,
    make_candidates,
    resolve_sizes,
    table_sizes,
)
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.approaches import fit
from scalelab.analysis.fitting.forms import ALIASES, parse_fix, with_fixed
from scalelab.analysis.fitting.law_files import resolve_law
from scalelab.analysis.fitting.law_fit import LawObjective
from scalelab.analysis.fitting.robust import DEFAULT_DELTA
from scalelab.analysis.runs.flops_model import flops_per_token_model
from scalelab.analysis.runs.table import load_table, split_curves

FIRST_PICKS = 16   # forced first picks the greedy is also started from
ESTIMATE = ("Fisher information (Gauss-Newton J^T J of the log residuals at the fitted parameters, residual "
            "variance of the fit times the Huber factor); the target's variance g^T (J^T J)^-1 g by the delta method")


def huber_factor(delta: float, sigma: float) -> float:
    """E[psi^2] / (E[psi'])^2 / sigma^2 of the Huber psi at ``delta`` for N(0, sigma^2) residuals."""
    if not sigma > 0:
        return 1.0
    k = float(delta) / float(sigma)
    inside = 2.0 * stats.norm.cdf(k) - 1.0
    if inside < 1e-300:
        return np.pi / 2
    psi2 = inside - 2.0 * k * stats.norm.pdf(k) + 2.0 * k * k * stats.norm.sf(k)
    return float(psi2 / inside ** 2)


@dataclass
class Information:
    """What a fit knows about its free parameters: J^T J at theta, and the noise of one run."""

    objective: LawObjective
    theta: np.ndarray
    jtj: np.ndarray
    residual_variance: float
    factor: float

    @property
    def scale(self) -> float:
        """Multiplies (J^T J)^-1 into the parameters' covariance."""
        return self.residual_variance * self.factor

    def gradients(self, data) -> np.ndarray:
        """(rows, free parameters): d log L / d theta at the rows of ``data``."""
        probe = LawObjective(self.objective.form, data.assign(loss=1.0), self.objective.delta, self.objective.fixed)
        with np.errstate(all="ignore"):
            _, grad = probe.log_predict(self.theta[None, :])
        return grad[0]

    def predict(self, data) -> np.ndarray:
        """The law's loss at the rows of ``data``, at the fitted parameters."""
        values = dict(self.objective.fixed)
        values.update({p.name: float(p.to_natural(t)) for p, t in zip(self.objective.free, self.theta, strict=True)})
        return np.atleast_1d(self.objective.form.predict(values, data)) * np.ones(len(data))

    def covariance(self) -> np.ndarray:
        """(J^T J)^-1 (pseudo-inverse where the runs leave a direction undetermined)."""
        return np.linalg.pinv(self.jtj, rcond=1e-13, hermitian=True)

    def log_variance(self, g) -> float:
        return float(self.scale * g @ self.covariance() @ g)


def fisher_information(table, form, fixed: dict, params: dict, delta: float = DEFAULT_DELTA) -> Information:
    """J^T J and the residual variance of ``form`` at fitted natural ``params`` over ``table``."""
    objective = LawObjective(form, table, delta, fixed)
    if not objective.free:
        raise AnalysisError(f"law {form.name!r} has no free parameters: new runs cannot inform it")
    theta = np.array([p.to_internal(params[p.name]) for p in objective.free])
    with np.errstate(all="ignore"):
        log_pred, grad = objective.log_predict(theta[None, :])
    jac, residual = grad[0], log_pred[0] - objective.log_l[0]
    if not (np.all(np.isfinite(jac)) and np.all(np.isfinite(residual))):
        raise AnalysisError(f"law {form.name!r}: its gradient is not finite at the fitted parameters")
    dof = max(len(residual) - len(theta), 1)
    variance = float(residual @ residual / dof)
    return Information(objective, theta, jac.T @ jac, variance, huber_factor(delta, np.sqrt(variance)))


def interval_width(predicted, log_variance, level: float = LEVEL):
    """Width of L * [exp(-z sd), exp(z sd)], the ``level`` interval of a log-normal prediction."""
    z = stats.norm.ppf(0.5 + level / 2)
    sd = np.sqrt(np.maximum(log_variance, 0.0))
    return predicted * (np.exp(z * sd) - np.exp(-z * sd))


def _after(cov, scale, g, jac_c, predicted, level):
    """Width at the target after adding each candidate alone to the runs behind ``cov``."""
    u = jac_c @ (cov @ g)
    q = np.einsum("kp,pq,kq->k", jac_c, cov, jac_c)
    return interval_width(predicted, scale * (g @ cov @ g - u * u / (1.0 + q)), level)


def _greedy(info: Information, g, jac_c, flops, budget: float, predicted: float, level: float, first=None):
    """[(index, width after, shrinkage per FLOP)]: the ratio greedy, optionally from a forced first pick."""
    cov, scale = info.covariance(), info.scale
    width_now = float(interval_width(predicted, scale * g @ cov @ g, level))
    available, left, picks = np.ones(len(flops), bool), float(budget), []
    while True:
        widths = _after(cov, scale, g, jac_c, predicted, level)
        gain = np.where(available & (flops <= left), (width_now - widths) / flops, -np.inf)
        k = int(np.argmax(gain)) if first is None or picks else int(first)
        if not gain[k] > 0:
            return picks
        picks.append((k, float(widths[k]), float(gain[k])))
        cj = cov @ jac_c[k]
        cov = cov - np.outer(cj, cj) / (1.0 + jac_c[k] @ cj)
        available[k], left, width_now = False, left - float(flops[k]), float(widths[k])


def greedy_pick(info: Information, g, jac_c, flops, budget: float, predicted: float, level: float = LEVEL):
    """(picks [(index, width after, shrinkage per FLOP)], each candidate's width after it alone).

    The greedy by shrinkage per FLOP is run from no forced pick and from each of the ``FIRST_PICKS``
    affordable candidates that shrink the interval most on their own as the first pick, and the set
    that ends narrowest is kept: a plain ratio greedy can spend the budget on many cheap runs where
    one larger run would have shrunk the interval more.
    """
    single = _after(info.covariance(), info.scale, g, jac_c, predicted, level)
    best = _greedy(info, g, jac_c, flops, budget, predicted, level)
    affordable = np.flatnonzero(flops <= budget)
    for k in affordable[np.argsort(single[affordable], kind="stable")][:FIRST_PICKS]:
        picks = _greedy(info, g, jac_c, flops, budget, predicted, level, first=k)
        if picks and (not best or picks[-1][1] < best[-1][1]):
            best = picks
    return best, single


@dataclass
class Suggestion:
    """The ranked candidates and the chosen runs (in the order the greedy took them)."""

    target: dict
    predicted: float
    width_now: float
    budget: float
    rounds: int
    chosen: list = field(default_factory=list)     # Candidate, in pick order
    chosen_rows: list = field(default_factory=list)
    ranked: list = field(default_factory=list)     # every candidate, best single shrinkage per FLOP first
    flops_note: str = ""
    estimate: str = ESTIMATE
    fit: dict = field(default_factory=dict)

    @property
    def spent(self) -> float:
        return float(sum(c.flops for c in self.chosen))

    @property
    def width_after(self) -> float:
        return self.chosen_rows[-1]["width_after"] if self.chosen_rows else self.width_now

    def to_dict(self) -> dict:
        return {"target": self.target, "predicted": self.predicted, "width_now": self.width_now,
                "width_after": self.width_after, "budget": self.budget, "rounds": self.rounds, "spent": self.spent,
                "chosen": self.chosen_rows, "ranked": self.ranked, "flops": self.flops_note,
                "estimate": self.estimate, "fit": self.fit}


def target_frame(target, fpt) -> pd.DataFrame:
    """One row from {column: value} (N, D, C spelled as params, tokens, flops); C = f(N)*D when absent."""
    row = {ALIASES.get(k, k): float(v) for k, v in dict(target).items()}
    if "flops" not in row and "params" in row and "tokens" in row:
        row["flops"] = float(fpt(row["params"]) * row["tokens"])
    return pd.DataFrame([row])


def _rows(candidates, picks, single, flops, width_now) -> tuple[list, list]:
    chosen_rows = []
    for k, width, gain in picks:
        c = candidates[k]
        chosen_rows.append(dict(asdict(c), label=c.label, width_after=width, shrink_per_flop=gain))
    picked = {k for k, _, _ in picks}
    order = np.argsort(-(width_now - single) / flops, kind="stable")
    ranked = [dict(asdict(candidates[k]), label=candidates[k].label, width_after=float(single[k]),
                   shrink_per_flop=float((width_now - single[k]) / flops[k]), chosen=bool(k in picked))
              for k in order]
    return chosen_rows, ranked


def _law_and_fixed(law, fix) -> tuple:
    form = resolve_law(law or "chinchilla")
    fixed = fix if isinstance(fix, dict) else parse_fix([fix] if isinstance(fix, str) else fix)
    if not [p for p in form.parameters if p.name not in fixed]:
        raise AnalysisError(f"law {form.name!r} has no free parameters"
                            + (" (--fix pins every one)" if fixed else "") + ": new runs cannot inform it")
    return form, with_fixed(form, fixed)


def suggest(table, target: dict, budget: float, law=None, fix=None, sizes=None,
            tokens_per_param=DEFAULT_TOKENS_PER_PARAM, rounds: int = 1, config_dir=None, level: float = LEVEL,
            seed: int = 0, **fit_options) -> Suggestion:
    """Fit ``law`` to ``table``, then pick candidate runs within ``budget / rounds`` FLOPs (this round's
    share) that shrink the target's interval most per FLOP; the estimate is the module's (Fisher
    information and the delta method, no refits).

    target: {column: value} for the law's variables (e.g. params=1e9, tokens=2e10). sizes: model
    names or parameter counts (``candidates.resolve_sizes``; default: the table's own sizes), each
    run at every ratio of ``tokens_per_param``; runs the table already has are left out. Other
    keyword arguments go to ``fit`` (n_starts, delta, ...).
    """
    if not float(budget) > 0:
        raise AnalysisError(f"--budget must be a positive number of FLOPs, got {budget:g}")
    if int(rounds) < 1:
        raise AnalysisError(f"--rounds must be 1 or more, got {rounds}")
    form, fixed = _law_and_fixed(law, fix)
    table, _ = split_curves(load_table(table))
    fpt = flops_per_token_model(table)
    point = target_frame(target, fpt)
    try:
        form.variables_of(point)
    except AnalysisError as exc:
        raise AnalysisError(f"--target: {exc}") from None
    sizes = resolve_sizes(sizes, config_dir) if sizes is not None else table_sizes(table)
    candidates = make_candidates(sizes, tokens_per_param, fpt, zip(table["params"], table["tokens"]))
    result = fit(table, "3", law=form, fix=fixed, seed=seed, **fit_options)
    if not result.converged:
        raise AnalysisError(f"the fit did not converge ({result.message}): there is nothing to suggest from")
    info = fisher_information(table, form, fixed, result.params, result.details.get("huber_delta", DEFAULT_DELTA))
    share = float(budget) / int(rounds)
    return _choose(info, candidates, point, share, dict(result.params), form, fpt, level, int(rounds))


def _choose(info, candidates, point, share, params, form, fpt, level, rounds) -> Suggestion:
    flops = np.array([c.flops for c in candidates])
    if not len(candidates) or not np.any(flops <= share):
        cheapest = f"; the cheapest candidate costs {flops.min():.3g}" if len(candidates) else ""
        raise AnalysisError(f"no candidate run fits within this round's {share:.3g} FLOPs{cheapest}: raise --budget, "
                            "lower --rounds or give smaller --candidates")
    predicted = float(info.predict(point)[0])
    g = info.gradients(point)[0]
    jac_c = info.gradients(pd.DataFrame({"params": [c.params for c in candidates],
                                         "tokens": [c.tokens for c in candidates], "flops": flops}))
    picks, single = greedy_pick(info, g, jac_c, flops, share, predicted, level)
    width_now = float(interval_width(predicted, info.log_variance(g), level))
    chosen_rows, ranked = _rows(candidates, picks, single, flops, width_now)
    target = {k: float(v) for k, v in point.iloc[0].items()}
    return Suggestion(target, predicted, width_now, share, rounds, [candidates[k] for k, _, _ in picks], chosen_rows,
                      ranked, f"C = f(N)*D, {fpt.describe()}",
                      fit={"law": form.name, "params": params, "residual_sd": float(np.sqrt(info.residual_variance)),
                           "huber_factor": info.factor, "n_runs": int(info.objective.log_l.shape[1])})


__all__ = ["ESTIMATE", "Candidate", "Information", "Suggestion", "fisher_information", "greedy_pick",
           "huber_factor", "interval_width", "suggest"]
