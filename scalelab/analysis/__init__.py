"""Scaling-law analysis: collect runs, fit laws (Kaplan, Chinchilla approaches 1-3), compare, report.

Typical use::

    from scalelab.analysis import collect, fit, compare, report
    table = collect(["sweeps/isoflop"])          # or load_table("runs.csv")
    result = fit(table, approach="3", bootstrap=200)
    print(result.a, result.ci["a"], result.to_dict())

Conventions: N is the non-embedding parameter count (column ``params``), C is
the table's ``flops`` column as given (C(N, D) = f(N)*D with f measured from
the table where an approach needs C for an (N, D) it has not run), losses are
nats/token. Every FitResult records them in ``conventions`` and says in
``status``/``reason`` whether it is determined; ``report`` writes a verdict
that ``read_verdict(out_dir)`` reads back.

The rooms follow the pipeline, each importing only those before it: the shared records here
(``errors``, ``conventions``, ``result``, ``bootstrap``, ``verdict``, ``threads``), ``runs/``
(collect, the table, budgets, C(N, D)), ``fitting/`` (the approaches, Kaplan, law forms and law
files, the one robust fitter, predictions), ``hyper/`` (the learning-rate law), ``decide/`` (compare,
suggest, prediction rungs), ``reports/`` (tables, figures, report.md). ``synthetic`` makes runs from known laws
(tests, demos). This module exports what the command line and notebooks call.
"""

from scalelab.analysis.decide import rung
from scalelab.analysis.decide.candidates import overrides_text, resolve_sizes
from scalelab.analysis.decide.compare import CompareResult, compare, compare_fits
from scalelab.analysis.decide.rung import plan_rung, rival_predictions, rung_overrides, verify_rung
from scalelab.analysis.decide.suggest import suggest
from scalelab.analysis.errors import AnalysisError, AnalysisWarning
from scalelab.analysis.fitting.approaches import fit
from scalelab.analysis.fitting.forms import ALIASES
from scalelab.analysis.fitting.predict import intervals_at, prediction_note
from scalelab.analysis.hyper.lr_law import best_over, best_per_cell, fit_lr_law, law_text
from scalelab.analysis.reports.document import trend_lines
from scalelab.analysis.reports.lr_plots import save_figures as save_lr_law_figures
from scalelab.analysis.reports.plots import save as save_figure
from scalelab.analysis.reports.plots import styled
from scalelab.analysis.reports.study import ReportResult, report
from scalelab.analysis.reports.tables import exponent_ci, fit_text, num, with_ci
from scalelab.analysis.result import FitResult, json_safe
from scalelab.analysis.runs.collect import collect
from scalelab.analysis.runs.inputs import load_inputs
from scalelab.analysis.runs.table import load_table, read_table, validate_table, write_table
from scalelab.analysis.verdict import Verdict, read_verdict

__all__ = ["ALIASES", "AnalysisError", "AnalysisWarning", "CompareResult", "FitResult", "ReportResult", "Verdict",
           "best_over", "best_per_cell", "collect", "compare", "compare_fits", "exponent_ci", "fit", "fit_lr_law",
           "fit_text", "intervals_at", "json_safe", "law_text", "load_inputs", "load_table", "num",
           "overrides_text", "plan_rung", "prediction_note", "read_table", "read_verdict", "report", "resolve_sizes",
           "rival_predictions",
           "rung", "rung_overrides", "save_figure",
           "save_lr_law_figures", "styled", "suggest", "trend_lines", "validate_table", "verify_rung", "with_ci",
           "write_table"]
