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
"""

from .collect import collect
from .compare import CompareResult, compare, compare_fits
from .errors import AnalysisError, AnalysisWarning
from .fitting import fit
from .report import ReportResult, report
from .result import FitResult
from .table import load_table, validate_table, write_table
from .verdict import Verdict, read_verdict

__all__ = ["AnalysisError", "AnalysisWarning", "CompareResult", "FitResult", "ReportResult", "Verdict", "collect",
           "compare", "compare_fits", "fit", "load_table", "read_verdict", "report", "validate_table",
           "write_table"]
