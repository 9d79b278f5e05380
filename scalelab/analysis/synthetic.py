"""Synthetic runs from a known law, for tests, demos and checking a pipeline end to end.

``ChinchillaLaw`` is L(N, D) = E + A/N^alpha + B/D^beta with FLOPs
C = f(N)*D, f(N) = k*N + overhead*sqrt(N). ``overhead`` = 0 is C = k*N*D; about
630 with k = 6 matches the ledger's count for the tiny models of the ladder
(p15k to p1m, byte vocabulary, sequence 64), where the output layer and
attention add 10% to 90% to 6N.
Generators return runs tables (and training-curve tables) in the analysis
format; ``write_sweep`` lays them out as run directories like the trainer's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalelab.analysis.fitting.law_files import resolve_law
from scalelab.runfiles import METRICS, SUMMARY


@dataclass(frozen=True)
class ChinchillaLaw:
    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28
    k: float = 6.0
    overhead: float = 0.0

    def flops_per_token(self, params):
        params = np.asarray(params, dtype=float)
        return self.k * params + self.overhead * np.sqrt(params)

    def loss(self, params, tokens):
        params = np.asarray(params, dtype=float)
        tokens = np.asarray(tokens, dtype=float)
        return self.E + self.A / params ** self.alpha + self.B / tokens ** self.beta

    @property
    def a(self) -> float:
        """The N_opt exponent under C = k*N*D (with an overhead see ``exponents``)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def n_opt(self, flops):
        flops = np.asarray(flops, dtype=float)
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        closed = g * (flops / self.k) ** self.a
        if not self.overhead:
            return closed
        return np.vectorize(self._n_opt_numeric)(flops, closed)

    def _n_opt_numeric(self, flops: float, guess: float) -> float:
        from scipy.optimize import minimize_scalar

        def reducible(log_n):
            n = np.exp(log_n)
            return self.A / n ** self.alpha + self.B / (flops / self.flops_per_token(n)) ** self.beta
        centre = np.log(guess)
        res = minimize_scalar(reducible, bounds=(centre - 6, centre + 6), method="bounded",
                              options={"xatol": 1e-10})
        return float(np.exp(res.x))

    def d_opt(self, flops):
        return np.asarray(flops, dtype=float) / self.flops_per_token(self.n_opt(flops))

    def exponents(self, low: float, high: float, points: int = 25) -> tuple[float, float]:
        """(a, b): slopes of log N_opt and log D_opt against log C between two budgets."""
        grid = np.logspace(np.log10(low), np.log10(high), points)
        a = np.polyfit(np.log(grid), np.log(self.n_opt(grid)), 1)[0]
        b = np.polyfit(np.log(grid), np.log(self.d_opt(grid)), 1)[0]
        return float(a), float(b)


def _noisy(values, noise: float, rng) -> np.ndarray:
    """Multiplicative log-normal noise with log-space standard deviation ``noise``."""
    values = np.asarray(values, dtype=float)
    return values * np.exp(rng.normal(0.0, noise, size=values.shape)) if noise else values


def grid_runs(law: ChinchillaLaw, params, tokens, noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """One run for every (N, D) pair of the two grids."""
    rng = np.random.default_rng(seed)
    n, d = (m.ravel() for m in np.meshgrid(np.asarray(params, float), np.asarray(tokens, float)))
    return pd.DataFrame({"params": n, "tokens": d, "flops": law.flops_per_token(n) * d,
                         "loss": _noisy(law.loss(n, d), noise, rng)})


def isoflop_runs(law: ChinchillaLaw, budgets, sizes_per_budget: int = 9, span_decades: float = 0.8,
                 noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP runs: per budget, sizes log-spaced +-span around the true N_opt, D = C/f(N)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        centre = float(law.n_opt(c))
        for n in centre * 10 ** np.linspace(-span_decades, span_decades, sizes_per_budget):
            rows.append({"params": n, "tokens": c / float(law.flops_per_token(n)), "flops": float(c),
                         "budget": float(c)})
    table = pd.DataFrame(rows)
    table["loss"] = _noisy(law.loss(table["params"], table["tokens"]), noise, rng)
    return table


LADDER_SIZES = (13408, 26784, 55536, 159120, 457744, 930400)   # non-embedding N of p15k ... p1m


def ladder_isoflop_runs(law: ChinchillaLaw, budgets, sizes=LADDER_SIZES, tokens_per_param=(0.5, 2000.0),
                        noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """IsoFLOP runs of a fixed ladder of sizes, as the sweeper plans them: per budget, every size
    whose D = C/f(N) gives tokens per parameter within ``tokens_per_param``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in sizes:
            d = float(c) / float(law.flops_per_token(n))
            if tokens_per_param[0] <= d / n <= tokens_per_param[1]:
                rows.append({"model": f"n{int(n)}", "params": float(n), "tokens": d, "flops": float(c),
                             "budget": float(c)})
    table = pd.DataFrame(rows)
    table["loss"] = _noisy(law.loss(table["params"], table["tokens"]), noise, rng)
    return table


def parabola_isoflop_runs(budgets, G: float, a: float, k: float = 6.0, sizes_per_budget: int = 9,
                          span_decades: float = 0.6, curvature: float = 0.05,
                          loss_floor: float = 2.0, loss_slope: float = 0.1) -> pd.DataFrame:
    """IsoFLOP runs whose loss is exactly a parabola in log N around N_opt = G*C^a."""
    rows = []
    for c in budgets:
        centre = G * float(c) ** a
        minimum = loss_floor + loss_slope * (float(c) / 1e18) ** -0.1
        for n in centre * 10 ** np.linspace(-span_decades, span_decades, sizes_per_budget):
            loss = minimum + curvature * np.log(n / centre) ** 2
            rows.append({"params": n, "tokens": c / (k * n), "flops": float(c), "budget": float(c),
                         "loss": loss})
    return pd.DataFrame(rows)


def curve_runs(law: ChinchillaLaw, sizes, tokens_per_param: float = 200.0, points: int = 60,
               start_fraction: float = 1e-3, noise: float = 0.0, seed: int = 0):
    """Runs trained to ``tokens_per_param`` * N with curves L(N, D_t) logged on a log grid of D_t.

    Returns (runs table, curves table); each run's final loss is its curve's last point.
    """
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for i, n in enumerate(np.asarray(sizes, dtype=float)):
        final = tokens_per_param * n
        run_dir = f"run{i:03d}"
        tokens = final * np.logspace(np.log10(start_fraction), 0, points)
        loss = _noisy(law.loss(n, tokens), noise, rng)
        curves.append(pd.DataFrame({"run_dir": run_dir, "step": np.arange(1, points + 1),
                                    "tokens": tokens, "flops": law.flops_per_token(n) * tokens,
                                    "train_loss": loss, "eval_loss": np.nan}))
        runs.append({"run_dir": run_dir, "params": n, "tokens": final, "flops": law.flops_per_token(n) * final,
                     "loss": float(loss[-1])})
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)


def write_run_dir(run_dir: Path, summary: dict, metrics: list[dict] | None = None) -> Path:
    """A run directory as the trainer writes it: summary.json and metrics.jsonl."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    if metrics is not None:
        with (run_dir / METRICS).open("w") as handle:
            for record in metrics:
                handle.write(json.dumps(record) + "\n")
    return run_dir


def write_sweep(root, runs: pd.DataFrame, curves: pd.DataFrame | None = None,
                eval_every: int = 5) -> Path:
    """Write each run of ``runs`` as ``root/<budget or 'runs'>/<model>/`` with summary and metrics."""
    root = Path(root)
    for i, run in enumerate(runs.itertuples(index=False)):
        run = run._asdict()
        model = run.get("model") or f"p{run['params']:.3g}".replace("+", "")
        budget = run.get("budget")
        group = f"C{budget:.2g}".replace("+", "") if budget is not None and np.isfinite(budget) else "runs"
        fpt = run["flops"] / run["tokens"]
        summary = {"status": run.get("status", "completed"), "model": model,
                   "params": run["params"], "params_total": run["params"] * 1.1,
                   "tokens": run["tokens"], "flops": run["flops"], "flops_per_token": fpt,
                   "final_eval_loss": run["loss"], "final_eval_bpb": run["loss"] / np.log(2) / 4,
                   "budget": budget if budget is not None and np.isfinite(budget) else None,
                   "steps": 100, "wall_seconds": 1.0}
        metrics = None
        if curves is not None and run.get("run_dir") is not None:
            curve = curves[curves["run_dir"] == run["run_dir"]]
            metrics = []
            for j, point in enumerate(curve.itertuples(index=False)):
                record = {"step": int(point.step), "tokens": float(point.tokens), "flops": float(point.flops),
                          "train_loss": float(point.train_loss), "lr": 1e-3, "grad_norm": 1.0,
                          "tokens_per_second": 1e5, "mfu": 0.3}
                if j % eval_every == eval_every - 1 or j == len(curve) - 1:
                    record["eval_loss"] = float(point.train_loss)
                metrics.append(record)
        write_run_dir(root / group / f"{model}_{i:03d}", summary, metrics)
    return root


def law_runs(law, values: dict, runs: pd.DataFrame, noise: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """``runs`` (params, tokens, flops and whatever else the law needs) with the loss of a law form
    (a built-in name, a law file or a LawForm) at ``values``, times log-normal noise."""
    out = runs.reset_index(drop=True).copy()
    out["loss"] = _noisy(resolve_law(law).predict(values, out), noise, np.random.default_rng(seed))
    return out


def design_runs(params, tokens, k: float = 6.0, **columns) -> pd.DataFrame:
    """Every (N, D) pair of the two grids with C = k*N*D, plus constant or per-row ``columns``."""
    n, d = (m.ravel() for m in np.meshgrid(np.asarray(params, float), np.asarray(tokens, float)))
    return pd.DataFrame({"params": n, "tokens": d, "flops": k * n * d, **columns})
