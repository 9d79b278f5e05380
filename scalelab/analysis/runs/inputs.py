"""Turn what a user names (a table file, a sweep directory, a DataFrame) into a runs table."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from scalelab.analysis.runs.collect import collect
from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.runs.table import load_table


def load_inputs(source) -> tuple[pd.DataFrame, str]:
    """(runs table with attrs, a short label). A directory is collected; a file is loaded."""
    if isinstance(source, pd.DataFrame):
        table = load_table(source)
        sweeps = table["sweep"].dropna().unique() if "sweep" in table.columns else []
        return table, (str(sweeps[0]) if len(sweeps) == 1 else "table")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return load_table(collect([path])), path.resolve().name
        if path.exists():
            return load_table(path), path.name.split(".")[0]
        raise AnalysisError(f"no such table or sweep directory: {str(path)!r}")
    raise AnalysisError(f"expected a table path, a sweep directory or a DataFrame, got {type(source).__name__}")


def load_many(sources, pool: bool = True) -> list[tuple[pd.DataFrame, str]]:
    """Several inputs: one pooled table (pool=True) or one (table, label) per input."""
    if isinstance(sources, (str, os.PathLike, pd.DataFrame)):
        sources = [sources]
    loaded = [load_inputs(s) for s in sources]
    if not loaded:
        raise AnalysisError("no inputs given")
    if not pool or len(loaded) == 1:
        return loaded
    tables, counts, curves = [], {}, []
    for table, label in loaded:
        part = table.copy()
        part.attrs = {}
        if "sweep" not in part.columns:
            part["sweep"] = label
        tables.append(part)
        for status, n in table.attrs.get("run_counts", {}).items():
            counts[status] = counts.get(status, 0) + n
        if table.attrs.get("curves") is not None:
            curves.append(table.attrs["curves"])
    pooled = pd.concat(tables, ignore_index=True)
    pooled.attrs["run_counts"] = counts
    if curves:
        pooled.attrs["curves"] = pd.concat(curves, ignore_index=True)
    return [(pooled, " + ".join(label for _, label in loaded))]
