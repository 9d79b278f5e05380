"""The suggest benchmark: does buying the runs `analyze suggest` picks shrink a prediction's interval
more than a fixed grid of the same FLOPs?

A known Chinchilla law with 1% log-normal noise; 15 starting runs (IsoFLOP, 3 budgets from 1e16 to
1e17 FLOPs); the target is N = 1e9, D = 2e10 (about 1000x the largest starting budget). Two ways to
spend the same budget (3e18 FLOPs) from the same starting runs and noise seed:

* suggest: three rounds of fit, `suggest` within a third of the budget (candidates: 6 sizes from
  1e6 to 3e8 times 1 ... 1000 tokens per parameter), "run" the chosen points (the true law times
  fresh noise), refit;
* grid: one IsoFLOP grid, 5 sizes around the true compute-optimal N at each of 3 budgets in the
  ratio 1:3:10 summing to the budget (given the true optimum, so it is the grid at its best).

Each arm's final fit is bootstrapped, and the width of ``predict``'s 95% interval of the mean at
the target is compared (the measured interval, not the Fisher estimate that chose the runs; the
estimate and each arm's error against the true loss are reported beside it), over several seeds.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from scalelab.analysis import fit, intervals_at, suggest
from scalelab.analysis import synthetic as sy

LAW = sy.ChinchillaLaw()
START_BUDGETS = (1e16, 3e16, 1e17)
TARGET = {"params": 1e9, "tokens": 2e10}
BUDGET = 3e18
ROUNDS = 3
SIZES = tuple(float(n) for n in np.logspace(6, 8.5, 6))
NOISE = 0.01
FIT = {"n_starts": 256}
BOOTSTRAP = {"bootstrap": 40, "bootstrap_starts": 4}


def measured(points: pd.DataFrame, rng) -> pd.DataFrame:
    """The points "run": the true law's loss times log-normal noise, C = 6 N D."""
    n, d = points["params"].to_numpy(float), points["tokens"].to_numpy(float)
    loss = LAW.loss(n, d) * np.exp(rng.normal(0.0, NOISE, size=len(n)))
    return pd.DataFrame({"params": n, "tokens": d, "flops": LAW.flops_per_token(n) * d, "loss": loss})


def grid_points(budget: float) -> pd.DataFrame:
    """IsoFLOP grid: 5 sizes per budget, budgets 1:3:10 summing to ``budget``."""
    unit = budget / (5 * 14)
    return sy.isoflop_runs(LAW, [unit, 3 * unit, 10 * unit], sizes_per_budget=5, span_decades=0.6)


def final_width(table: pd.DataFrame, seed: int) -> dict:
    """Bootstrap interval width, predicted loss and relative error at the target of a fit to ``table``."""
    result = fit(table, "3", seed=seed, **FIT, **BOOTSTRAP)
    row = intervals_at(result.to_dict(), pd.DataFrame([TARGET]))[0]
    truth = float(LAW.loss(TARGET["params"], TARGET["tokens"]))
    return {"width": float(row["interval"][1] - row["interval"][0]), "predicted": row["predicted"],
            "error": float(row["predicted"] / truth - 1.0), "runs": len(table), "flops": float(table["flops"].sum())}


def suggest_arm(start: pd.DataFrame, seed: int) -> dict:
    """Three rounds of suggest / run / refit from ``start``."""
    rng = np.random.default_rng([seed, 1])
    table, estimates = start, []
    for round_ in range(ROUNDS):
        s = suggest(table, TARGET, BUDGET, sizes=list(SIZES), rounds=ROUNDS, seed=seed, **FIT)
        estimates.append({"round": round_ + 1, "width_now": s.width_now, "width_after": s.width_after,
                          "runs": len(s.chosen), "spent": s.spent})
        bought = pd.DataFrame({"params": [c.params for c in s.chosen], "tokens": [c.tokens for c in s.chosen]})
        table = pd.concat([table, measured(bought, rng)], ignore_index=True)
    return dict(final_width(table, seed), bought_flops=float(table["flops"].sum() - start["flops"].sum()),
                rounds=estimates)


def grid_arm(start: pd.DataFrame, seed: int) -> dict:
    bought = measured(grid_points(BUDGET), np.random.default_rng([seed, 2]))
    return dict(final_width(pd.concat([start, bought], ignore_index=True), seed),
                bought_flops=float(bought["flops"].sum()))


def bench_suggest(seeds: int = 5) -> dict:
    """Both arms for each seed, and the widths' means and ratio."""
    rows, began = [], time.perf_counter()
    for seed in range(seeds):
        start = measured(sy.isoflop_runs(LAW, START_BUDGETS, sizes_per_budget=5, span_decades=0.6),
                         np.random.default_rng([seed, 0]))
        rows.append({"seed": seed, "suggest": suggest_arm(start, seed), "grid": grid_arm(start, seed)})
    widths = {arm: float(np.mean([r[arm]["width"] for r in rows])) for arm in ("suggest", "grid")}
    ratios = [r["suggest"]["width"] / r["grid"]["width"] for r in rows]
    return {"law": {k: getattr(LAW, k) for k in ("E", "A", "B", "alpha", "beta")}, "noise": NOISE,
            "target": TARGET, "budget": BUDGET, "rounds": ROUNDS, "seeds": seeds, "per_seed": rows,
            "mean_width": widths, "ratio_of_means": widths["suggest"] / widths["grid"],
            "geometric_mean_ratio": float(np.exp(np.mean(np.log(ratios)))),
            "suggest_narrower": int(sum(r < 1 for r in ratios)),
            "rms_error": {arm: float(np.sqrt(np.mean([r[arm]["error"] ** 2 for r in rows]))) for arm in ("suggest", "grid")},
            "seconds": time.perf_counter() - began}


def format_suggest(result: dict) -> str:
    lines = [f"target N={TARGET['params']:.3g} D={TARGET['tokens']:.3g}; {result['budget']:.3g} FLOPs bought per arm "
             f"from 15 starting runs; 95% interval of the mean (bootstrap, {BOOTSTRAP['bootstrap']} resamples)",
             f"{'seed':>4}{'suggest width':>15}{'grid width':>12}{'ratio':>8}{'suggest err':>13}{'grid err':>10}"
             f"{'suggest runs':>14}{'suggest FLOPs':>15}{'grid FLOPs':>12}"]
    for r in result["per_seed"]:
        s, g = r["suggest"], r["grid"]
        lines.append(f"{r['seed']:>4}{s['width']:>15.4f}{g['width']:>12.4f}{s['width'] / g['width']:>8.2f}"
                     f"{s['error']:>+13.2%}{g['error']:>+10.2%}{s['runs'] - 15:>14}"
                     f"{s['bought_flops']:>15.3g}{g['bought_flops']:>12.3g}")
    w = result["mean_width"]
    lines.append(f"mean width: suggest {w['suggest']:.4f}, grid {w['grid']:.4f}, ratio {result['ratio_of_means']:.2f} "
                 f"(geometric mean of the per-seed ratios {result['geometric_mean_ratio']:.2f}; suggest narrower in "
                 f"{result['suggest_narrower']} of {result['seeds']} seeds); rms error vs the true loss: suggest "
                 f"{result['rms_error']['suggest']:.2%}, grid {result['rms_error']['grid']:.2%}; "
                 f"{result['seconds']:.0f} s")
    return "\n".join(lines)
