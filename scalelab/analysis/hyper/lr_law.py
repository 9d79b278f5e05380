"""Learning-rate sweeps per cell, and the law lr* = c * N^p * D^q [* B^r] fitted through them.

A cell is a group of runs that share everything but the learning rate: N (`params`), D
(`tokens`), the batch (`batch_size`, `seq_len`), the schedule, and any other hyperparameter
column that varies in the table (seeds repeat a point: their losses are averaged per lr). In
each cell the best run is the lowest loss, and a parabola in log(lr) through the best point and
up to two neighbours on each side (3-5 points) gives the optimum `lr_opt`, its vertex. A cell is
unbracketed when its best run sits at the smallest or largest lr of its grid, when the parabola
has no minimum, or when the vertex falls outside the points it was fitted on: its optimum is not
known, only bounded.

The law is a least-squares fit of log lr_opt = log c + p log N + q log D (+ r log B) over the
bracketed cells, with BCa bootstrap intervals from resampling the cells' residuals (scalelab/analysis/bootstrap.py).
B is the batch in tokens, batch_size * seq_len. The law file is `scalelab.lr_law_file.LrLaw`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scalelab.analysis.bootstrap import LEVEL, intervals
from scalelab.analysis.errors import AnalysisError, AnalysisWarning
from scalelab.analysis.runs.collect import STUDY_COLUMNS
from scalelab.analysis.runs.table import INCLUDED_STATUS
from scalelab.lr_law_file import EXPONENTS, LrLaw

VARIABLE_COLUMNS = {"N": "params", "D": "tokens", "B": "batch_tokens"}
# columns that define a cell beside the variables (when the table has them)
CELL_COLUMNS = ("params", "tokens", "batch_size", "seq_len", "schedule", "warmup")
# columns that never split cells: run identity, outcomes, bookkeeping, and what a sweep may vary freely
NOT_CELL = frozenset({"sweep", "run_dir", "status", "model", "params_total", "flops", "flops_per_token", "budget",
                      "loss", "bpb", "seed", "mfu", "wall_seconds", "packed_with", "lr", "batch_tokens",
                      "cell", "is_best", "lr_opt", "lr_bracketed", "cell_note", "model.lr", "optimizer.lr_law",
                      "train.log_every", "train.eval_every", "train.progress", "train.seed", "error"})
NOT_CELL_PREFIXES = ("checkpoint.", "logger.", "hydra.")
HALF_WINDOW = 2  # neighbours each side of the best lr in the parabola
CONVENTIONS = {
    "N": "non-embedding parameters, as scalelab's ledger counts them (runs table column 'params')",
    "D": "training tokens (column 'tokens': data.tokens in whole steps)",
    "B": "batch in tokens, train.batch_size * data.seq_len (columns batch_size * seq_len)",
    "lr": "peak learning rate of the schedule (optimizer.lr; column 'lr')",
    "lr_opt": "per cell, the vertex of a parabola of loss in log(lr) through the best run and up to "
              f"{HALF_WINDOW} neighbours each side",
}


@dataclass
class CellOptimum:
    """One cell's sweep (losses averaged per lr, lrs ascending) and its optimum."""

    cell: str
    lrs: np.ndarray
    losses: np.ndarray
    best: int  # index of the lowest loss
    lr_opt: float  # NaN unless bracketed
    bracketed: bool
    note: str  # why not bracketed ('' when it is)
    coeffs: tuple = ()  # parabola a*x^2 + b*x + c in x = log(lr), over lrs[window]
    window: tuple = (0, 0)  # [start, stop) of the fitted points
    values: dict = field(default_factory=dict)  # the cell's N, D, B


def optimum_of(lrs, losses) -> tuple[float, bool, str, tuple, tuple]:
    """(lr_opt, bracketed, note, parabola coeffs, window) of one cell's (lr, loss) points."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    n = len(lrs)
    if n < 3:
        return math.nan, False, f"only {n} learning rate(s): a sweep needs at least 3", (), (0, n)
    best = int(np.argmin(losses))
    if best in (0, n - 1):
        side = "smallest" if best == 0 else "largest"
        return math.nan, False, f"best run at the {side} lr of the grid ({lrs[best]:.3g})", (), (0, n)
    lo, hi = max(0, best - HALF_WINDOW), min(n, best + HALF_WINDOW + 1)
    x = np.log(lrs[lo:hi])
    coeffs = tuple(float(v) for v in np.polyfit(x, losses[lo:hi], 2))
    a, b, _ = coeffs
    if not a > 0:
        return math.nan, False, "the parabola through the best lr has no minimum", coeffs, (lo, hi)
    vertex = -b / (2 * a)
    if not x[0] <= vertex <= x[-1]:
        outside = f"the parabola's vertex ({math.exp(vertex):.3g}) lies outside the fitted lrs"
        return math.nan, False, outside, coeffs, (lo, hi)
    return float(math.exp(vertex)), True, "", coeffs, (lo, hi)


def with_batch_tokens(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `batch_tokens` = batch_size * seq_len when it has both columns."""
    if "batch_tokens" in table.columns or not {"batch_size", "seq_len"} <= set(table.columns):
        return table
    out = table.copy()
    out["batch_tokens"] = pd.to_numeric(out["batch_size"]) * pd.to_numeric(out["seq_len"])
    return out


def cell_columns(table: pd.DataFrame, swept: str = "lr") -> list[str]:
    """The columns whose values define a cell: CELL_COLUMNS the table has, and every other column of
    a varying hyperparameter (a dotted config key) except the swept one and those in NOT_CELL."""
    columns = [c for c in CELL_COLUMNS if c in table.columns and c != swept]
    for c in table.columns:
        if ("." in c and c not in NOT_CELL and c != swept and not c.startswith(NOT_CELL_PREFIXES)
                and c not in columns):
            columns.append(c)
    return columns


def _label(keys: dict) -> str:
    names = {"params": "N", "tokens": "D"}
    return " ".join(f"{names.get(k, k)}={v:.3g}" if isinstance(v, (numbers.Real, np.number)) and not
                    isinstance(v, (bool, np.bool_)) else f"{names.get(k, k)}={v}" for k, v in keys.items())


def _label_keys(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The cell keys worth naming in a label: those that vary, less the columns that the model size
    determines (a model's d_model or d_ff beside N); the label stays unique per cell."""
    varying = [k for k in keys if table[k].nunique(dropna=False) > 1]
    if "params" not in varying:
        return varying
    per_size = table.groupby("params", dropna=False)
    return [k for k in varying if k == "params" or per_size[k].nunique(dropna=False).max() > 1]


def mark_cells(table: pd.DataFrame, swept: str = "lr") -> tuple[pd.DataFrame, list[CellOptimum]]:
    """The table with per-cell columns `cell`, `is_best`, `<swept>_opt`, `<swept>_bracketed` and
    `cell_note`, and each cell's optimum. Every row is kept."""
    if swept not in table.columns:
        raise AnalysisError(f"the table has no column {swept!r} to find the best of (columns: "
                            f"{', '.join(map(str, table.columns))})")
    out = with_batch_tokens(table).reset_index(drop=True)
    out[swept] = pd.to_numeric(out[swept], errors="coerce")
    if not (np.isfinite(out[swept]) & (out[swept] > 0)).all():
        raise AnalysisError(f"column {swept!r} must be a positive number in every row")
    keys = cell_columns(out, swept)
    shown = _label_keys(out, keys)
    out["cell"], out["is_best"] = "", False
    out[f"{swept}_opt"], out[f"{swept}_bracketed"], out["cell_note"] = math.nan, False, ""
    cells = []
    groups = out.groupby(keys, sort=True, dropna=False) if keys else [((), out)]
    for _, rows in groups:
        first = rows.iloc[0]
        label = _label({k: first[k] for k in shown}) or "all"
        per_lr = rows.groupby(swept)["loss"].mean().sort_index()
        lr_opt, ok, note, coeffs, window = optimum_of(per_lr.index.to_numpy(), per_lr.to_numpy())
        values = {v: float(first[c]) for v, c in VARIABLE_COLUMNS.items() if c in out.columns}
        cells.append(CellOptimum(label, per_lr.index.to_numpy(float), per_lr.to_numpy(float),
                                 int(np.argmin(per_lr.to_numpy())), lr_opt, ok, note, coeffs, window, values))
        for column, value in (("cell", label), (f"{swept}_opt", lr_opt), (f"{swept}_bracketed", ok),
                              ("cell_note", note)):
            out.loc[rows.index, column] = value
        out.loc[rows["loss"].idxmin(), "is_best"] = True
    return out, cells


def best_per_cell(table: pd.DataFrame, swept: str = "lr") -> pd.DataFrame:
    """The best run of each cell: the `is_best` rows (cells marked here when the table has no
    `is_best` column), with a warning for cells whose optimum is not bracketed."""
    marked = table if "is_best" in table.columns else mark_cells(table, swept)[0]
    best = marked[marked["is_best"].astype(bool)].reset_index(drop=True)
    flag = f"{swept}_bracketed"
    if flag in best.columns and not best[flag].astype(bool).all():
        loose = best.loc[~best[flag].astype(bool), "cell"]
        warnings.warn(f"best-only: {len(loose)} of {len(best)} cell(s) have no bracketed {swept} optimum, so their "
                      f"best run may not be their best {swept}: {'; '.join(map(str, loose))}", AnalysisWarning,
                      stacklevel=2)
    best.attrs = dict(table.attrs)
    curves = best.attrs.get("curves")
    if curves is not None and "run_dir" in best.columns:
        best.attrs["curves"] = curves[curves["run_dir"].isin(best["run_dir"])].reset_index(drop=True)
    return best


def _design(cells: list[CellOptimum], over: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = np.column_stack([np.ones(len(cells))] + [np.log([c.values[v] for c in cells]) for v in over])
    return x, np.log([c.lr_opt for c in cells])


def _solve(cells: list[CellOptimum], over: tuple[str, ...]) -> dict | None:
    """{'log_c', 'p', 'q', 'r'} (those fitted) by least squares; None when the cells cannot tell
    the variables apart (too few cells, or a variable that does not vary independently)."""
    x, y = _design(cells, over)
    if len(cells) < x.shape[1] or np.linalg.matrix_rank(x) < x.shape[1]:
        return None
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    return {"log_c": float(coef[0]), **{EXPONENTS[v]: float(k) for v, k in zip(over, coef[1:])}}


def _residual_bootstrap(cells: list[CellOptimum], over: tuple[str, ...], resamples: int, seed: int) -> list[dict]:
    """Refits of log lr* = X beta + e with the cells' residuals resampled (scaled up for the fitted
    parameters). The design (each cell's N, D, B) stays fixed: resampling whole cells of a small
    grid draws near-collinear designs whose exponents say nothing about the data's noise."""
    x, y = _design(cells, over)
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    fitted = x @ coef
    n, k = x.shape
    if n <= k:
        return []
    residuals = (y - fitted) * np.sqrt(n / (n - k))
    rng, samples = np.random.default_rng(seed), []
    for _ in range(resamples):
        star = np.linalg.lstsq(x, fitted + rng.choice(residuals, n, replace=True), rcond=None)[0]
        samples.append({"log_c": float(star[0]), **{EXPONENTS[v]: float(b) for v, b in zip(over, star[1:])}})
    return samples


def parse_over(text) -> tuple[str, ...]:
    over = tuple(v.strip().upper() for v in (text.split(",") if isinstance(text, str) else text) if v.strip())
    bad = [v for v in over if v not in VARIABLE_COLUMNS]
    if not over or bad or len(set(over)) != len(over):
        raise AnalysisError(f"--over takes distinct variables from N, D, B (e.g. N,D); got {text!r}")
    return tuple(v for v in VARIABLE_COLUMNS if v in over)


@dataclass
class LrLawFit:
    law: LrLaw
    cells: list[CellOptimum]  # every cell, bracketed or not
    used: list[CellOptimum]
    over: tuple[str, ...]
    table: pd.DataFrame  # the runs, with the per-cell columns


def _check_cells(cells: list[CellOptimum], allow_edge: bool) -> list[CellOptimum]:
    bad = [c for c in cells if not c.bracketed]
    if bad and not allow_edge:
        listed = "; ".join(f"{c.cell}: {c.note}" for c in bad)
        raise AnalysisError(f"{len(bad)} of {len(cells)} cell(s) have no bracketed lr optimum, so the law "
                            f"cannot use them: {listed}. Widen their lr grids, or pass --allow-edge to fit "
                            "without them")
    if bad:
        warnings.warn(f"lr-law: left out {len(bad)} unbracketed cell(s): "
                      + "; ".join(f"{c.cell} ({c.note})" for c in bad), AnalysisWarning, stacklevel=3)
    return [c for c in cells if c.bracketed]


def fit_lr_law(table: pd.DataFrame, over=("N", "D"), bootstrap: int = 200, seed: int = 0,
               allow_edge: bool = False, source: str | None = None) -> LrLawFit:
    """The learning-rate law of a table of lr sweeps (see the module's docstring)."""
    over = parse_over(over)
    marked, cells = mark_cells(table)
    missing = [VARIABLE_COLUMNS[v] for v in over if VARIABLE_COLUMNS[v] not in marked.columns]
    if missing:
        raise AnalysisError(f"--over {','.join(over)} needs column(s) {', '.join(missing)} "
                            "(B is batch_size * seq_len)")
    used = _check_cells(cells, allow_edge)
    estimate = _solve(used, over)
    if estimate is None:
        raise AnalysisError(f"{len(used)} bracketed cell(s) cannot determine a law over {','.join(over)}: it "
                            f"needs at least {len(over) + 1} cells in which each of {', '.join(over)} varies "
                            "independently of the others (fit fewer variables with --over, or add cells)")
    samples = _residual_bootstrap(used, over, bootstrap, seed)
    jackknife = [s for s in (_solve(used[:i] + used[i + 1:], over) for i in range(len(used))) if s is not None]
    ci, methods = intervals(samples, estimate, jackknife) if samples else ({}, {})
    law = _law_record(estimate, used, cells, over, ci, methods, bootstrap, len(samples), seed, source)
    return LrLawFit(law, cells, used, over, marked)


def _law_record(estimate, used, cells, over, ci, methods, requested, succeeded, seed, source) -> LrLaw:
    x, y = _design(used, over)
    coef = [estimate["log_c"]] + [estimate[EXPONENTS[v]] for v in over]
    residuals = y - x @ np.asarray(coef)
    dof = len(used) - len(coef)
    intervals_out = {EXPONENTS[v]: list(ci[EXPONENTS[v]]) for v in over if EXPONENTS[v] in ci}
    if "log_c" in ci:
        intervals_out["c"] = [math.exp(v) for v in ci["log_c"]]
    validity = {v: [min(c.values[v] for c in used), max(c.values[v] for c in used)]
                for v in VARIABLE_COLUMNS if all(v in c.values for c in used)}
    extra = {
        "fitted": list(over),
        "ci": intervals_out,
        "ci_level": LEVEL,
        "ci_method": sorted(set(methods.values())),
        "bootstrap": {"requested": requested, "succeeded": succeeded,
                      "resampled": "residuals of the cells' log lr_opt", "seed": seed},
        "log_residual_std": float(np.sqrt(np.sum(residuals ** 2) / dof)) if dof > 0 else None,
        "cells": [{"cell": c.cell, **c.values, "lr_opt": c.lr_opt if c.bracketed else None,
                   "lr_best": float(c.lrs[c.best]), "loss_best": float(c.losses[c.best]),
                   "lrs": len(c.lrs), "used": c.bracketed, "note": c.note} for c in cells],
        "conventions": CONVENTIONS,
        "source": source,
    }
    return LrLaw(c=math.exp(estimate["log_c"]), p=estimate.get("p", 0.0), q=estimate.get("q", 0.0),
                 r=estimate.get("r"), validity=validity, extra=extra)


def law_text(fit: LrLawFit) -> str:
    """A few lines: the law with its intervals, and the cells used."""
    law, ci = fit.law, fit.law.extra["ci"]

    def num(key, value):
        low_high = ci.get(key)
        return f"{value:.4g}" + (f" [{low_high[0]:.4g}, {low_high[1]:.4g}]" if low_high else "")

    terms = " * ".join(f"{v}^{getattr(law, EXPONENTS[v]):.3f}" for v in fit.over)  # the fitted variables only
    lines = [f"lr* = {law.c:.4g} * {terms}",
             f"  c {num('c', law.c)}"] + [f"  {EXPONENTS[v]} {num(EXPONENTS[v], getattr(law, EXPONENTS[v]))}"
                                          for v in fit.over]
    boot = law.extra["bootstrap"]
    lines.append(f"  {len(fit.used)} of {len(fit.cells)} cells; 95% intervals from "
                 f"{boot['succeeded']}/{boot['requested']} residual resamples")
    lines += [f"  {c.cell}: lr_opt {c.lr_opt:.3g}" if c.bracketed else f"  {c.cell}: left out ({c.note})"
              for c in fit.cells]
    return "\n".join(lines)


def best_over(table: pd.DataFrame, key: str = "optimizer.lr") -> pd.DataFrame:
    """The table with per-cell columns for a sweep over config `key` (every row kept): `cell` (runs
    sharing all but `key`), `is_best` (lowest loss of its cell), `<column>_opt` (the parabola
    optimum in log(key)), `<column>_bracketed` and `cell_note` (scalelab/analysis/hyper/lr_law.py).
    Only completed runs take part; `analyze fit|report --best-only` fits the `is_best` rows."""
    column = {v: k for k, v in STUDY_COLUMNS.items()}.get(key, key)
    if column not in table.columns:
        raise AnalysisError(f"--best-over {key}: no run records {key} (columns: {', '.join(table.columns)})")
    plain = table.copy()
    plain.attrs = {}  # (the curves in attrs would be compared by concat)
    done = plain["status"] == INCLUDED_STATUS if "status" in plain.columns else pd.Series(True, plain.index)
    marked, _ = mark_cells(plain[done], swept=column)
    out = pd.concat([marked, with_cell_columns(plain[~done], column)], ignore_index=True)
    out.attrs = dict(table.attrs)
    return out


def with_cell_columns(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """`rows` with empty per-cell columns (runs that take no part in a cell's best)."""
    rows = rows.copy()
    for name, empty in (("cell", ""), ("is_best", False), (f"{column}_opt", math.nan),
                        (f"{column}_bracketed", False), ("cell_note", "did not complete")):
        rows[name] = empty
    return rows
