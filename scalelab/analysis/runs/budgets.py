"""Compute budgets: grouping runs into IsoFLOP budgets and choosing report budgets."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError

DEFAULT_TOLERANCE = 0.05


def group_by_flops(flops, tolerance: float = DEFAULT_TOLERANCE) -> np.ndarray:
    """Budget label per run, grouping runs whose FLOPs agree within ``tolerance`` (relative).

    Runs are sorted by FLOPs; a group starts at its smallest run and takes every
    following run within (1 + tolerance) of it. The label is the group's geometric mean.
    """
    flops = np.asarray(flops, dtype=float)
    order = np.argsort(flops)
    labels = np.empty_like(flops)
    start = 0
    while start < len(order):
        end = start
        first = flops[order[start]]
        while end + 1 < len(order) and flops[order[end + 1]] <= first * (1 + tolerance):
            end += 1
        members = order[start:end + 1]
        labels[members] = float(np.exp(np.mean(np.log(flops[members]))))
        start = end + 1
    return labels


def assign_budgets(table: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE) -> tuple[pd.Series, str]:
    """Budget per run and where it came from.

    Uses the ``budget`` column when it has values (runs without one get NaN);
    otherwise groups runs by FLOPs within ``tolerance``.
    """
    if "budget" in table.columns:
        budget = pd.to_numeric(table["budget"], errors="coerce")
        if budget.notna().any():
            return budget.astype(float), "the table's 'budget' column"
    labels = group_by_flops(table["flops"].to_numpy(dtype=float), tolerance)
    return (pd.Series(labels, index=table.index),
            f"runs grouped by FLOPs agreeing within {tolerance:.0%}")


def decade_grid(flops) -> list[float]:
    """Powers of ten inside the FLOP range (the geometric mean if none is)."""
    flops = np.asarray(flops, dtype=float)
    low, high = math.ceil(math.log10(flops.min()) - 1e-9), math.floor(math.log10(flops.max()) + 1e-9)
    grid = [10.0 ** k for k in range(low, high + 1)]
    return grid or [float(np.exp(np.mean(np.log(flops))))]


def default_budgets(table: pd.DataFrame) -> list[float]:
    """The budgets in the data (``budget`` column), or a decade grid over its FLOP range."""
    if "budget" in table.columns:
        values = pd.to_numeric(table["budget"], errors="coerce").dropna()
        values = values[values > 0]
        if len(values):
            return sorted(float(v) for v in values.unique())
    return decade_grid(table["flops"])


def parse_budgets(text) -> list[float] | None:
    """'1e18,3e18' -> [1e18, 3e18]; None or '' -> None."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        text = str(text).strip()
        if not text:
            return None
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise AnalysisError(f"budgets must be comma-separated numbers like 1e18,1e19: {exc}") from exc
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise AnalysisError(f"budgets must be positive finite FLOP counts, got {text!r}")
    return sorted(values)
