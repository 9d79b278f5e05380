"""Chinchilla approach 1: the lower envelope of loss-vs-FLOPs training curves.

For each C on a log grid, the run whose (smoothed) training curve is lowest at
C gives N_opt(C) = its params and D_opt(C) = C / its flops per token. Grid
points where the winner is the smallest or largest size whose curve reaches C
are dropped: there the true optimum may lie outside the sampled sizes. Power
laws are fitted through the rest; their envelope losses give the frontier L(C).
A run drawn twice by a bootstrap resample counts once (the envelope is a minimum).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting.frontier import allocation_fit
from scalelab.analysis.result import FitResult

DEFAULT_GRID = 60
DEFAULT_SMOOTH = 5


def run_curves(table: pd.DataFrame, curves, loss_column: str = "train_loss",
               smooth: int = DEFAULT_SMOOTH) -> list[dict]:
    """One entry per run that has a usable curve: params, flops per token, log C and loss arrays."""
    if curves is None or len(curves) == 0:
        raise AnalysisError(
            "approach 1 needs training curves: collect the runs from their directories, or put "
            "<table>.curves.csv (run_dir, step, tokens, flops, train_loss, eval_loss) beside the table")
    if "run_dir" not in table.columns:
        raise AnalysisError("approach 1 needs a 'run_dir' column in the runs table to match runs to their curves")
    missing = [c for c in ("run_dir", "tokens", "flops") if c not in curves.columns]
    if missing or loss_column not in curves.columns:
        raise AnalysisError(f"the curves table is missing column(s): {', '.join(missing + [loss_column])}")
    by_run = {key: group for key, group in curves.groupby("run_dir", sort=False)}
    out = []
    for run in table.drop_duplicates("run_dir").itertuples(index=False):
        curve = by_run.get(run.run_dir)
        if curve is None:
            continue
        per_token = run.flops / run.tokens
        flops = pd.to_numeric(curve["flops"], errors="coerce").to_numpy(dtype=float, copy=True)
        no_flops = ~np.isfinite(flops)
        flops[no_flops] = pd.to_numeric(curve["tokens"], errors="coerce").to_numpy(dtype=float)[no_flops] * per_token
        loss = pd.to_numeric(curve[loss_column], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(flops) & np.isfinite(loss) & (flops > 0) & (loss > 0)
        if ok.sum() < 2:
            continue
        order = np.argsort(flops[ok])
        flops, loss = flops[ok][order], loss[ok][order]
        if smooth > 1:
            loss = pd.Series(loss).rolling(smooth, center=True, min_periods=1).mean().to_numpy()
        out.append({"run_dir": run.run_dir, "params": float(run.params), "flops_per_token": per_token,
                    "log_flops": np.log(flops), "loss": loss})
    if len(out) < 2:
        raise AnalysisError(f"approach 1 needs training curves of at least 2 runs, found {len(out)} "
                            f"among {len(table)} runs")
    return out


def envelope(runs: list[dict], n_grid: int = DEFAULT_GRID) -> pd.DataFrame:
    """The lowest curve at each grid C: winner's params, D_opt, loss, and whether it is an edge size."""
    start = min(r["log_flops"][0] for r in runs)
    stop = max(r["log_flops"][-1] for r in runs)
    rows = []
    for log_c in np.linspace(start, stop, n_grid):
        best, covering = None, []
        for run in runs:
            if run["log_flops"][0] <= log_c <= run["log_flops"][-1]:
                covering.append(run["params"])
                value = float(np.interp(log_c, run["log_flops"], run["loss"]))
                if best is None or value < best[0]:
                    best = (value, run)
        if best is None:
            continue
        value, run = best
        flops = float(np.exp(log_c))
        rows.append({"flops": flops, "N_opt": run["params"], "D_opt": flops / run["flops_per_token"],
                     "loss": value, "n_covering_sizes": len(set(covering)),
                     "edge": run["params"] in (min(covering), max(covering))})
    return pd.DataFrame(rows)


def fit_approach1(table: pd.DataFrame, curves=None, n_grid: int = DEFAULT_GRID,
                  loss_column: str = "train_loss", smooth: int = DEFAULT_SMOOTH, **_ignored) -> FitResult:
    """Fit approach 1 on a validated table and its curves."""
    points = envelope(run_curves(table, curves, loss_column, smooth), n_grid)
    inner = points[~points["edge"]] if len(points) else points
    winners = inner["N_opt"].nunique() if len(inner) else 0
    if winners < 2:
        raise AnalysisError(
            f"approach 1 needs the envelope to pass through at least 2 model sizes away from the smallest "
            f"and largest sizes reaching each C; it passes through {winners}. Train more sizes or longer curves")
    result, note = allocation_fit("1", inner["flops"], inner["N_opt"], inner["D_opt"], inner["loss"], len(table))
    result.conventions["curves"] = (f"curve loss column '{loss_column}', running mean over {smooth} logged "
                                    "points; D_opt = C / (the winning run's flops/tokens)")
    result.details = {"grid_points": int(len(points)), "used_points": int(len(inner)),
                      "winning_sizes": int(winners), "envelope": points.to_dict(orient="records"),
                      "frontier_note": note}
    return result
