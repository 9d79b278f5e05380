"""Task accuracy from small runs: the two-step chain (the OLMo model ladder's method).

Step 1: (N, D) -> the task's bits per byte of the correct continuation, through a law form (default
Chinchilla's E + A/N^alpha + B/D^beta), fitted as approach 3 fits the loss. Step 2: bits per byte
-> accuracy, a sigmoid between the task's chance level (known) and a ceiling (fitted):
acc = chance + (ceiling - chance) / (1 + exp(k (bpb - mid))). The chain predicts accuracy at any
(N, D); its 95% intervals come from a bootstrap that resamples the runs and refits both steps.

Two intervals: `interval` for the expected accuracy of a model at (N, D) (what the synthetic
coverage test checks), and `prediction_interval` for one measurement of it on `items` items,
which adds the binomial noise of the items and step 2's residual scatter (what a held-out run is
held to). A task is *not determined* when its accuracy never leaves chance, or when the runs do not
reach the sigmoid's bend (the fit could put it anywhere); the reason says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.law_files import resolve_law
from scalelab.analysis.fitting.law_fit import fit_law
from scalelab.analysis.runs.table import INCLUDED_STATUS

LEVEL = 0.95
CHANCE = 0.25  # the built-in tasks' (four choices)
MIN_RUNS = 8


def task_columns(task: str, metric: str = "acc") -> tuple[str, str]:
    """The runs table's columns of a task: its accuracy metric and its bits per byte."""
    return f"task/{task}/{metric}", f"task/{task}/bpb"


def sigmoid(bpb, chance: float, ceiling: float, mid: float, k: float):
    return chance + (ceiling - chance) / (1.0 + np.exp(np.clip(k * (np.asarray(bpb, float) - mid), -60, 60)))


def fit_sigmoid(bpb, acc, chance: float, start=None) -> tuple[np.ndarray, float]:
    """(ceiling, mid, k) of the step-2 sigmoid by least squares; its residual standard deviation."""
    bpb, acc = np.asarray(bpb, float), np.asarray(acc, float)
    span = max(float(np.ptp(bpb)), 1e-3)
    lower = [chance + 1e-3, float(bpb.min()) - 5 * span, 1e-3 / span]
    upper = [1.0, float(bpb.max()) + 5 * span, 200.0 / span]
    if start is None:
        start = [min(1.0, max(float(acc.max()) + 0.05, chance + 0.01)), float(np.median(bpb)), 4.0 / span]
    start = np.clip(start, np.add(lower, 1e-9), np.subtract(upper, 1e-9))
    fit = least_squares(lambda p: sigmoid(bpb, chance, *p) - acc, start, bounds=(lower, upper))
    dof = max(len(acc) - 3, 1)
    return fit.x, float(np.sqrt(np.sum(fit.fun ** 2) / dof))


@dataclass
class TaskChain:
    """A fitted chain: step 1's law values, step 2's sigmoid, their bootstrap draws, the verdict."""

    task: str
    metric: str
    law: str
    chance: float
    n_runs: int
    items: int | None
    law_values: dict
    sigmoid: dict  # ceiling, mid, k, residual_sd
    draws: list = field(default_factory=list)  # (law values, (ceiling, mid, k)) per resample
    determined: bool = True
    reason: str = ""
    bootstrap_fitted: int = 0
    bootstrap: int = 0
    holdout: dict | None = None
    k_flops: float = 6.0  # the table's median flops / (N D), for the C of a target
    bpb_residual_sd: float = 0.0  # step 1's scatter of one run's bits per byte about the law (items, seeds)

    def bpb(self, params, tokens, values=None):
        data = pd.DataFrame({"params": np.atleast_1d(np.asarray(params, float)),
                             "tokens": np.atleast_1d(np.asarray(tokens, float))})
        data["flops"] = self.k_flops * data["params"] * data["tokens"]
        return resolve_law(self.law).predict(values or self.law_values, data)

    def accuracy(self, params, tokens) -> np.ndarray:
        s = self.sigmoid
        return sigmoid(self.bpb(params, tokens), self.chance, s["ceiling"], s["mid"], s["k"])

    def predict(self, params: float, tokens: float, repeats: int = 1) -> dict:
        """Accuracy at (N, D): point, 95% interval of the expectation, 95% prediction interval of the
        mean of `repeats` measurements (seeds) on `items` items each; and the bits per byte with its
        interval."""
        point_bpb, point = float(self.bpb(params, tokens)[0]), float(self.accuracy(params, tokens)[0])
        accs, bpbs = [], []
        for values, (ceiling, mid, k) in self.draws:
            b = float(self.bpb(params, tokens, values)[0])
            bpbs.append(b)
            accs.append(float(sigmoid(b, self.chance, ceiling, mid, k)))
        out = {"params": float(params), "tokens": float(tokens), "accuracy": point, "bpb": point_bpb}
        if len(accs) >= 10:
            lo, hi = (1 - LEVEL) / 2, (1 + LEVEL) / 2
            out["interval"] = [float(np.quantile(accs, lo)), float(np.quantile(accs, hi))]
            out["bpb_interval"] = [float(np.quantile(bpbs, lo)), float(np.quantile(bpbs, hi))]
            rng = np.random.default_rng(0)
            noise = self.sigmoid["residual_sd"] / math.sqrt(repeats) * rng.standard_normal(len(accs))
            if self.items:  # the mean of `repeats` measurements on `items` items: binomial noise around each draw
                draws = np.clip(np.asarray(accs) + noise, 0, 1)
                noisy = rng.binomial(self.items * repeats, draws) / (self.items * repeats)
            else:
                noisy = np.asarray(accs) + noise
            out["prediction_interval"] = [float(np.quantile(noisy, lo)), float(np.quantile(noisy, hi))]
            scatter = self.bpb_residual_sd / math.sqrt(repeats) * rng.standard_normal(len(bpbs))
            measured_bpb = np.asarray(bpbs) + scatter
            out["bpb_prediction_interval"] = [float(np.quantile(measured_bpb, lo)), float(np.quantile(measured_bpb, hi))]
        return out

    def to_dict(self) -> dict:
        return {"task": self.task, "metric": self.metric, "law": self.law, "chance": self.chance,
                "n_runs": self.n_runs, "items": self.items, "law_values": self.law_values, "sigmoid": self.sigmoid,
                "determined": self.determined, "reason": self.reason, "bootstrap": self.bootstrap,
                "bootstrap_fitted": self.bootstrap_fitted, "holdout": self.holdout}


def best_over_sizes(chain: TaskChain, flops, sizes, values=None, sigmoid_params=None) -> np.ndarray:
    """The best accuracy reachable at each compute in `flops` over the model sizes `sizes` (D = C/(k N))."""
    n_CxN = np.asarray(sizes, float)[None, :] * np.ones((len(flops), 1))
    d_CxN = np.asarray(flops, float)[:, None] / (chain.k_flops * n_CxN)
    bpb = chain.bpb(n_CxN.ravel(), d_CxN.ravel(), values).reshape(n_CxN.shape)
    ceiling, mid, k = sigmoid_params or (chain.sigmoid["ceiling"], chain.sigmoid["mid"], chain.sigmoid["k"])
    return sigmoid(bpb, chain.chance, ceiling, mid, k).max(axis=1)


def items_of(runs: pd.DataFrame, task: str) -> int | None:
    """The items each run was scored on (the table's task/NAME/items column), if it says."""
    column = f"task/{task}/items"
    return int(runs[column].median()) if column in runs and runs[column].notna().any() else None


def runs_for(table: pd.DataFrame, task: str, metric: str) -> pd.DataFrame:
    acc, bpb = task_columns(task, metric)
    missing = [c for c in (acc, bpb) if c not in table.columns]
    if missing:
        have = sorted({c.split("/")[1] for c in table.columns if c.startswith("task/")})
        raise AnalysisError(f"the runs carry no {' or '.join(missing)}; tasks in this table: "
                            f"{', '.join(have) or 'none (train with train.eval_tasks=[stdlib])'}")
    rows = table[table[acc].notna() & table[bpb].notna()].copy()
    if "status" in rows:
        rows = rows[rows["status"] == INCLUDED_STATUS]
    if len(rows) < MIN_RUNS:
        raise AnalysisError(f"task {task}: {len(rows)} runs with its metrics; the chain needs at least {MIN_RUNS}")
    if "loss" in rows:
        rows["original_loss"] = rows["loss"]
    return rows.assign(loss=rows[bpb], acc=rows[acc]).reset_index(drop=True)


def not_determined(runs: pd.DataFrame, chance: float, items: int | None, s: dict) -> str:
    """Why a chain cannot be trusted, or "" (see the module's docstring)."""
    n = items or 100
    se = math.sqrt(chance * (1 - chance) / n)
    if float(runs["acc"].max()) - chance < 3 * se:
        return (f"accuracy never leaves chance: the best run scores {runs['acc'].max():.3f} against chance "
                f"{chance:.2f} (3 standard errors of {n} items: {3 * se:.3f})")
    fitted = sigmoid(runs["loss"], chance, s["ceiling"], s["mid"], s["k"])
    covered = float(np.ptp(fitted)) / max(s["ceiling"] - chance, 1e-9)
    if covered < 0.15:
        return (f"the runs do not reach the sigmoid's bend: over their bits per byte the fitted curve "
                f"moves {covered:.0%} of its range (chance to ceiling), so its midpoint and ceiling are guesses")
    return ""


def fit_chain(table: pd.DataFrame, task: str, metric: str = "acc", law: str = "chinchilla", bootstrap: int = 200,
              seed: int = 0, chance: float = CHANCE, items: int | None = None, n_starts: int | None = 256) -> TaskChain:
    """Fit the two steps to the runs of `table` that carry the task's metrics; bootstrap both."""
    runs = runs_for(table, task, metric)
    items = items or items_of(runs, task)
    form = resolve_law(law)
    step1 = fit_law(runs, form, n_starts=n_starts, seed=seed)
    if not step1.converged:
        raise AnalysisError(f"task {task}: step 1 (bits per byte against N and D, law {form.name}): {step1.message}")
    theta = list(step1.details["theta"].values())  # the free parameters, fitted space, in the fitter's order
    values = {k: float(v) for k, v in step1.params.items() if k in form.names}
    (ceiling, mid, k), sd = fit_sigmoid(runs["loss"], runs["acc"], chance)
    s = {"ceiling": float(ceiling), "mid": float(mid), "k": float(k), "residual_sd": sd}
    chain = TaskChain(task=task, metric=metric, law=form.name, chance=chance, n_runs=len(runs), items=items,
                      law_values=values, sigmoid=s, bootstrap=bootstrap,
                      k_flops=float(np.median(runs["flops"] / (runs["params"] * runs["tokens"]))))
    residuals = runs["loss"].to_numpy() - chain.bpb(runs["params"], runs["tokens"])
    chain.bpb_residual_sd = float(np.sqrt(np.mean(residuals ** 2)))
    chain.reason = not_determined(runs, chance, items, s)
    chain.determined = not chain.reason
    rng = np.random.default_rng(seed)
    for _ in range(bootstrap):
        sample = runs.iloc[rng.integers(0, len(runs), len(runs))].reset_index(drop=True)
        try:
            refit = fit_law(sample, form, starts=[theta], n_polish=1, seed=seed)
            if not refit.converged:
                continue
            drawn, _ = fit_sigmoid(sample["loss"], sample["acc"], chance, start=[ceiling, mid, k])
        except (AnalysisError, ValueError, FloatingPointError):
            continue
        chain.draws.append(({n: float(v) for n, v in refit.params.items() if n in form.names}, tuple(drawn)))
    chain.bootstrap_fitted = len(chain.draws)
    return chain


def measured_interval(accs, items: int | None, draws: int = 2000) -> list[float] | None:
    """95% bootstrap interval of a mean accuracy over seeds, each measured on `items` items (a
    parametric bootstrap: binomial draws around each seed's accuracy); None without `items`."""
    if not items:
        return None
    rng = np.random.default_rng(0)
    means = rng.binomial(items, np.clip(np.asarray(accs, float), 0, 1), size=(draws, len(accs))).mean(axis=1) / items
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def holdout_chain(table: pd.DataFrame, task: str, metric: str = "acc", **options) -> dict:
    """Fit without the largest budget and predict its best point's accuracy (mean over seeds, the
    point with the lowest loss where the table has a loss, else the highest accuracy)."""
    runs = runs_for(table, task, metric)
    budget = "budget" if "budget" in runs and runs["budget"].notna().all() else "flops"
    top = runs[budget].max()
    train, held = table[table[budget] != top] if budget in table else table, runs[runs[budget] == top]
    chain = fit_chain(train, task, metric, **options)
    key = "original_loss" if "original_loss" in held else None
    by_point = held.groupby(["params", "tokens"])
    rank = by_point[key].mean() if key else -by_point["acc"].mean()
    params, tokens = rank.idxmin()
    point = held[(held["params"] == params) & (held["tokens"] == tokens)]
    predicted = chain.predict(params, tokens, repeats=len(point))
    measured = float(point["acc"].mean())
    interval = predicted.get("prediction_interval")
    return {"budget": float(top), "params": float(params), "tokens": float(tokens), "seeds": int(len(point)),
            "measured": measured, "measured_interval": measured_interval(point["acc"], chain.items),
            "predicted": predicted["accuracy"], "interval": interval,
            "error": predicted["accuracy"] - measured,
            "inside": bool(interval and interval[0] <= measured <= interval[1]),
            "determined": chain.determined, "reason": chain.reason}


def task_names(table: pd.DataFrame) -> list[str]:
    """The tasks a runs table carries accuracies of."""
    return sorted({c.split("/")[1] for c in table.columns if c.startswith("task/") and c.endswith("/acc")})


def check_at(chain: TaskChain, table: pd.DataFrame) -> list[dict]:
    """The chain's predictions for runs it was not fitted on (a prediction rung's): per (N, D) of
    `table`, the measured mean accuracy over its seeds with its own interval against the predicted
    accuracy and its 95% prediction interval for that mean; and the same for step 1 alone, the bits
    per byte (its interval: the law's parameters and the runs' scatter about it)."""
    acc, bpb = task_columns(chain.task, chain.metric)
    done = table[table["status"] == INCLUDED_STATUS] if "status" in table else table
    done = done[done[acc].notna() & done[bpb].notna()] if {acc, bpb} <= set(done.columns) else done.iloc[:0]
    rows = []
    for (params, tokens), point in done.groupby(["params", "tokens"]):
        predicted = chain.predict(params, tokens, repeats=len(point))
        measured, band = float(point[acc].mean()), predicted.get("prediction_interval")
        rows.append({"model": point["model"].iloc[0] if "model" in point else None, "params": float(params),
                     "tokens": float(tokens), "seeds": int(len(point)), "measured": measured,
                     "measured_interval": measured_interval(point[acc], chain.items),
                     "predicted": predicted["accuracy"], "interval": band, "error": predicted["accuracy"] - measured,
                     "inside": None if band is None else bool(band[0] <= measured <= band[1]),
                     "bpb_measured": float(point[bpb].mean()), "bpb_predicted": predicted["bpb"],
                     "bpb_interval": predicted.get("bpb_prediction_interval")})
        band = rows[-1]["bpb_interval"]
        rows[-1]["bpb_inside"] = None if band is None else bool(band[0] <= rows[-1]["bpb_measured"] <= band[1])
    return rows


def rung_tasks(study: pd.DataFrame, rung: pd.DataFrame, chains: dict | None = None, **options) -> list[dict]:
    """Every task both the study's and the rung's runs carry: its chain (from `chains` by name, else
    fitted to the study's runs) checked on the rung's sizes (`check_at`). A task whose chain cannot
    be fitted says why instead of sizes; one not determined says why beside them."""
    out = []
    for name in (n for n in task_names(study) if n in task_names(rung)):
        chain = (chains or {}).get(name)
        if chain is None:
            try:
                chain = fit_chain(study, name, **options)
            except AnalysisError as exc:
                out.append({"task": name, "determined": False, "reason": str(exc), "sizes": []})
                continue
        out.append({"task": name, "determined": chain.determined, "reason": chain.reason,
                    "sizes": check_at(chain, rung)})
    return out
