"""The runs table: load, validate, write.

One row per run with the required columns ``params`` (non-embedding N),
``tokens`` (D), ``flops`` (C) and ``loss`` (final eval loss, nats/token).
Training curves (one row per logged step) travel beside it as a second table
in ``table.attrs["curves"]`` and in a ``<name>.curves.<ext>`` file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from scalelab.analysis.errors import AnalysisError, AnalysisWarning

REQUIRED_COLUMNS = ("params", "tokens", "flops", "loss")
OPTIONAL_COLUMNS = ("sweep", "model", "params_total", "budget", "run_dir", "status", "bpb")
CURVE_COLUMNS = ("run_dir", "step", "tokens", "flops", "train_loss", "eval_loss")
INCLUDED_STATUS = "completed"

_CSV = (".csv",)
_PARQUET = (".parquet", ".pq")


def table_format(path) -> str:
    """'csv' or 'parquet', from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix in _CSV:
        return "csv"
    if suffix in _PARQUET:
        return "parquet"
    raise AnalysisError(
        f"cannot tell the table format of {str(path)!r}: use a .csv or .parquet file name")


def curves_path(path) -> Path:
    """Where the training-curves table of ``runs.csv`` lives: ``runs.curves.csv``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.curves{path.suffix}")


def read_table(path: Path) -> pd.DataFrame:
    try:
        if table_format(path) == "csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except AnalysisError:
        raise
    except Exception as exc:  # parser errors of every kind become one clear message
        raise AnalysisError(f"cannot read table {str(path)!r}: {exc}") from exc


def _write(frame: pd.DataFrame, path: Path) -> None:
    if table_format(path) == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def write_table(table: pd.DataFrame, path) -> list[Path]:
    """Write the runs table (and its curves beside it, when it has some). Returns the paths."""
    path = Path(path)
    table_format(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    plain = table.copy()
    plain.attrs = {}
    _write(plain, path)
    written = [path]
    curves = table.attrs.get("curves")
    if curves is not None and len(curves):
        _write(curves, curves_path(path))
        written.append(curves_path(path))
    return written


def _row_name(table: pd.DataFrame, label) -> str:
    """'row 3' plus the run's model or directory when the table has one."""
    extra = []
    for column in ("model", "run_dir"):
        if column in table.columns:
            value = table.at[label, column]
            if isinstance(value, str) and value:
                extra.append(f"{column} {value}")
                break
    return f"row {label}" + (f" ({', '.join(extra)})" if extra else "")


def validate_table(table: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Check the required columns and values; return a clean float-typed copy.

    Raises AnalysisError naming the missing columns, or the column and row of
    the first bad value (non-numeric, NaN, infinite or non-positive).
    """
    if not isinstance(table, pd.DataFrame):
        raise AnalysisError(f"{source}: expected a table (DataFrame), got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise AnalysisError(
            f"{source} is missing required column(s): {', '.join(missing)} "
            f"(need {', '.join(REQUIRED_COLUMNS)}; found {', '.join(map(str, table.columns)) or 'none'})")
    if len(table) == 0:
        raise AnalysisError(f"{source} is empty: it has no runs")
    clean = table.copy()
    clean.attrs = {}
    for column in REQUIRED_COLUMNS:
        values = pd.to_numeric(clean[column], errors="coerce")
        bad = ~(np.isfinite(values.to_numpy(dtype=float)) & (values.to_numpy(dtype=float) > 0))
        if bad.any():
            labels = list(clean.index[bad])
            shown = ", ".join(
                f"{_row_name(clean, lab)} = {clean.at[lab, column]!r}" for lab in labels[:3])
            more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
            raise AnalysisError(
                f"{source}: column '{column}' must be a positive finite number; "
                f"bad value at {shown}{more}")
        clean[column] = values.astype(float)
    for column in ("budget", "params_total", "bpb"):
        if column in clean.columns:
            clean[column] = pd.to_numeric(clean[column], errors="coerce").astype(float)
    return clean


def drop_excluded(table: pd.DataFrame, source: str = "table") -> pd.DataFrame:
    """Drop rows whose ``status`` is not 'completed', warning with counts by status."""
    if "status" not in table.columns:
        return table
    status = table["status"].fillna("unknown").astype(str)
    keep = status == INCLUDED_STATUS
    if not keep.all():
        counts = status[~keep].value_counts()
        detail = ", ".join(f"{n} {s}" for s, n in counts.items())
        warnings.warn(f"{source}: excluded {int((~keep).sum())} of {len(table)} runs "
                      f"that did not complete ({detail})", AnalysisWarning, stacklevel=3)
    kept = table[keep]
    kept.attrs = dict(table.attrs)
    return kept


def load_table(path_or_df, validate: bool = True) -> pd.DataFrame:
    """Load a runs table from CSV/Parquet (by extension) or take a DataFrame.

    Rows whose ``status`` is not 'completed' are dropped with a warning. The
    training-curves table is attached as ``attrs['curves']`` when it is given
    (already in attrs, or as ``<name>.curves.<ext>`` beside the file).
    """
    if isinstance(path_or_df, pd.DataFrame):
        table = path_or_df
        curves = table.attrs.get("curves")
        source = "table"
        attrs = dict(table.attrs)
    elif isinstance(path_or_df, (str, os.PathLike)):
        path = Path(path_or_df)
        table_format(path)
        if not path.is_file():
            raise AnalysisError(f"table file not found: {str(path)!r}")
        table = read_table(path)
        source = str(path)
        cpath = curves_path(path)
        curves = read_table(cpath) if cpath.is_file() else None
        attrs = {"source": source}
    else:
        raise AnalysisError(f"expected a table path or a DataFrame, got {type(path_or_df).__name__}")
    counts = table.attrs.get("run_counts")
    kept = drop_excluded(table, source)
    if len(kept) == 0 and len(table) > 0:
        raise AnalysisError(f"{source} has no completed runs: all {len(table)} runs were excluded by status")
    if validate:
        kept = validate_table(kept, source)
    else:
        kept = kept.copy()
    kept = kept.reset_index(drop=True)
    attrs.pop("curves", None)
    kept.attrs = attrs
    if counts is None:
        status = table["status"].fillna("unknown").astype(str) if "status" in table.columns else None
        counts = (status.value_counts().to_dict() if status is not None
                  else {INCLUDED_STATUS: len(kept)})
    kept.attrs["run_counts"] = {str(k): int(v) for k, v in counts.items()}
    if curves is not None:
        kept.attrs["curves"] = curves
    return kept


def split_curves(table: pd.DataFrame, curves=None):
    """Return (plain table without attrs, curves table or None)."""
    if curves is None:
        curves = table.attrs.get("curves")
    plain = table.copy()
    plain.attrs = {}
    return plain, curves
