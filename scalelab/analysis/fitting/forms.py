"""Law forms as data: an expression over named variables, its parameters (scale, bounds, starting
grid) and what the data need to identify it.

Every form is fitted by the same robust fitter (``law_fit``: Huber loss of log residuals,
multi-start batched L-BFGS, bootstrap). Variables of every form: ``N`` (= column ``params``),
``D`` (``tokens``), ``C`` (``flops``), ``M`` (tokens per parameter, D/N), any column of the table
by its name, and the form's own ``variables`` (expressions over those).

Built-in forms (``BUILTIN``):
    chinchilla         E + A/N^alpha + B/D^beta (approach 3; the default)
    tied               E + (A + B*M^-alpha) * N^-alpha, i.e. one exponent for both terms;
                       it reports beta = alpha, so the Chinchilla names evaluate it
    kaplan             [(Nc/N)^(alpha_N/alpha_D) + Dc/D]^alpha_D   (Kaplan et al. 2020)
    data-constrained   E + A/N^alpha + B/D'^beta with the effective data after repetition
                       D' = U + U*R_star*(1 - exp(-R/R_star)), U unique tokens, R = epochs - 1
                       (Muennighoff et al. 2023); needs a column unique_tokens or epochs
    envelope           Linf + A*C^-alpha, the one-variable compute frontier
Parameters with ``scale="log"`` are positive and fitted as their logarithm (as approach 3 fits
log A, log B, log E); their grids are given as natural logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting import expression as law_expr
from scalelab.analysis.fitting.robust import GRID_A, GRID_B, GRID_E, GRID_EXPONENT

ALIASES = {"N": "params", "D": "tokens", "C": "flops"}
CHINCHILLA_NAMES = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class Parameter:
    """One parameter: fitted on a log scale (positive) or a linear one, within bounds, from a grid.

    ``grid`` is in the fitted space (natural logs for ``scale="log"``); ``bounds`` in natural units
    (None: unbounded on that side).
    """

    name: str
    scale: str = "linear"
    grid: tuple = (0.0,)
    bounds: tuple = (None, None)

    def to_internal(self, value: float) -> float:
        return float(np.log(value)) if self.scale == "log" else float(value)

    def to_natural(self, internal):
        return np.exp(internal) if self.scale == "log" else internal

    def internal_bounds(self) -> tuple:
        low, high = self.bounds
        if self.scale == "log":
            low = None if low is None or low <= 0 else float(np.log(low))
            high = None if high is None else float(np.log(high))
        return (low, high)


@dataclass(frozen=True)
class LawForm:
    """A law: ``expression`` in ``parameters`` and variables; ``derived`` adds reported parameters
    (expressions of the fitted ones); ``min_distinct`` is how many distinct values each variable
    needs; ``allocates`` says whether a compute-optimal allocation follows (in closed form for the
    Chinchilla names, numerically for other laws of N and D); ``floor`` names the loss at unbounded N, D."""

    name: str
    expression: str
    parameters: tuple
    variables: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)
    min_distinct: dict = field(default_factory=dict)
    allocates: bool = False
    frontier: dict | None = None          # reported frontier L(C) = E + A*C^-gamma: names of parameters
    floor: str | None = None              # the parameter the loss tends to as N, D grow without bound
    source: str = "built-in"
    note: str = ""
    prepare: object = field(default=None, compare=False, repr=False)   # data -> extra variables

    @property
    def parsed(self) -> law_expr.Expression:
        return law_expr.parse(self.expression)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise AnalysisError(f"law {self.name!r} has no parameter {name!r} (its parameters: {', '.join(self.names)})")

    def reported(self, values: dict) -> dict:
        """Fitted (natural) values plus the derived ones, in the form's order."""
        out = dict(values)
        for name, text in self.derived.items():
            out[name] = float(law_expr.parse(text).value(values))
        return out

    def variables_of(self, data) -> dict:
        """The arrays of every variable the expression uses, from a table or a mapping of columns."""
        needed = [n for n in self.parsed.names if n not in self.names]
        extra = self.prepare(data) if self.prepare is not None else {}
        env = {}
        for name in needed:
            env[name] = np.asarray(self._variable(name, data, extra), dtype=float)
        return env

    def _variable(self, name: str, data, extra: dict, seen: tuple = ()):
        if name in extra:
            return extra[name]
        if name in self.variables and name not in seen:
            expr = law_expr.parse(self.variables[name])
            return expr.value({n: self._variable(n, data, extra, seen + (name,)) for n in expr.names})
        if name in data:
            return np.asarray(data[name], dtype=float)
        if name in ALIASES and ALIASES[name] in data:
            return np.asarray(data[ALIASES[name]], dtype=float)
        if name == "M" and "params" in data and "tokens" in data:
            return np.asarray(data["tokens"], dtype=float) / np.asarray(data["params"], dtype=float)
        raise AnalysisError(f"law {self.name!r} needs the variable {name!r}: give a column {name!r}"
                            + (f" (or {ALIASES[name]!r})" if name in ALIASES else ""))

    def predict(self, values: dict, data):
        """Loss predicted at the rows of ``data`` for natural parameter ``values`` (fixed ones included)."""
        env = dict(self.variables_of(data))
        env.update({k: float(v) for k, v in values.items() if k in self.names})
        return np.asarray(self.parsed.value(env), dtype=float)

    def check(self, table, n_free: int) -> None:
        """Refuse data that cannot identify the law's free parameters, saying why."""
        n = len(table)
        if n < n_free + 1:
            raise AnalysisError(f"law {self.name!r} fits {n_free} free parameters and needs at least "
                                f"{n_free + 1} runs; got {n}")
        env = self.variables_of(table)
        for name, values in env.items():
            need = self.min_distinct.get(name, 2)
            distinct = len(np.unique(np.round(np.broadcast_to(values, (n,)), 12)))
            if distinct < need:
                raise AnalysisError(f"law {self.name!r}: the variable {name} takes {distinct} distinct "
                                    f"value(s) over the {n} runs; identifying its terms needs at least {need}")

    def to_dict(self, fixed: dict | None = None) -> dict:
        """What a fit JSON stores: enough to evaluate the law again without this module's registry."""
        return {"name": self.name, "source": self.source, "expression": self.expression,
                "variables": dict(self.variables), "derived": dict(self.derived),
                "parameters": [{"name": p.name, "scale": p.scale, "bounds": list(p.bounds)}
                               for p in self.parameters],
                "fixed": dict(fixed or {}), "allocates": self.allocates, "note": self.note}


def _chinchilla_parameters(exponents=("alpha", "beta")) -> tuple:
    # The order (a, b, e, exponents) and the grids are approach 3's, so that the same n_starts
    # and seed draw the same starts.
    return (Parameter("A", "log", GRID_A), Parameter("B", "log", GRID_B), Parameter("E", "log", GRID_E),
            *(Parameter(name, "linear", GRID_EXPONENT) for name in exponents))


def epochs_variables(data) -> dict:
    """U (unique tokens) and R (epochs beyond the first) from a column unique_tokens or epochs."""
    tokens = np.asarray(data["tokens"], dtype=float)
    if "unique_tokens" in data or "epochs" in data:   # per row: unique_tokens where given, else epochs
        unique = np.full_like(tokens, np.nan)
        if "epochs" in data:
            unique = tokens / np.asarray(data["epochs"], dtype=float)
        if "unique_tokens" in data:
            given = np.asarray(data["unique_tokens"], dtype=float)
            unique = np.where(np.isfinite(given), given, unique)
    else:
        raise AnalysisError("law 'data-constrained' needs a column unique_tokens (tokens of unique data) or "
                            "epochs (passes over it); without one the data cannot identify R_star: fit "
                            "--law chinchilla instead")
    if not np.all(np.isfinite(unique) & (unique > 0)):
        raise AnalysisError("law 'data-constrained': every run needs a positive unique_tokens (or epochs)")
    return {"U": unique, "R": np.maximum(tokens / unique - 1.0, 0.0)}


MIN_REPEATED_RUNS = 3


class DataConstrainedForm(LawForm):
    """The data-constrained law: besides the generic check, enough runs must repeat their data."""

    def check(self, table, n_free: int) -> None:
        repeated = int((epochs_variables(table)["R"] > 1e-6).sum())
        if repeated < MIN_REPEATED_RUNS:
            raise AnalysisError(f"law 'data-constrained': {repeated} of {len(table)} runs repeat data (epochs > 1); "
                                f"the data cannot identify R_star without at least {MIN_REPEATED_RUNS} such runs: "
                                "fit --law chinchilla instead")
        super().check(table, n_free)


def _builtins() -> dict:
    chinchilla = LawForm("chinchilla", "E + A / N**alpha + B / D**beta", _chinchilla_parameters(),
                         allocates=True, floor="E")
    tied = LawForm("tied", "E + (A + B * M**-alpha) * N**-alpha", _chinchilla_parameters(("alpha",)),
                   derived={"beta": "alpha"}, allocates=True, floor="E")
    scale_grid = (5.0, 15.0, 25.0, 35.0)
    kaplan = LawForm("kaplan", "((Nc / N)**(alpha_N / alpha_D) + Dc / D)**alpha_D",
                     (Parameter("Nc", "log", scale_grid), Parameter("Dc", "log", scale_grid),
                      Parameter("alpha_N", "linear", (0.05, 0.1, 0.3, 0.6), (0.0, None)),
                      Parameter("alpha_D", "linear", (0.05, 0.1, 0.3, 0.6), (1e-4, None))), allocates=True)
    # Kaplan's coupled N-D term over an irreducible loss E: Kaplan's form falls as a pure power law
    # without end, which a study of small models extrapolated 10x under-predicted (NOTES.md)
    kaplan_e = LawForm("kaplan-e", "E + ((Nc / N)**(alpha_N / alpha_D) + Dc / D)**alpha_D",
                       (Parameter("E", "log", (-1.5, -0.5, 0.0), (0.01, None)), Parameter("Nc", "log", scale_grid),
                        Parameter("Dc", "log", scale_grid),
                        Parameter("alpha_N", "linear", (0.05, 0.1, 0.3, 0.6), (0.0, None)),
                        Parameter("alpha_D", "linear", (0.05, 0.1, 0.3, 0.6), (1e-4, None))),
                       allocates=True, floor="E")
    constrained = DataConstrainedForm(
        "data-constrained", "E + A / N**alpha + B / (U + U * R_star * (1 - exp(-R / R_star)))**beta",
        _chinchilla_parameters() + (Parameter("R_star", "log", (np.log(3.0), np.log(30.0))),),
        allocates=True, floor="E", prepare=epochs_variables,
        note="the compute-optimal allocation assumes fresh data (one epoch: D' = D)")
    envelope = LawForm("envelope", "Linf + A * C**-alpha",
                       (Parameter("Linf", "log", (-1.0, 0.0, 1.0)), Parameter("A", "log", (0.0, 5.0, 10.0, 20.0)),
                        Parameter("alpha", "linear", (0.05, 0.2, 0.5, 1.0))),
                       min_distinct={"C": 3}, frontier={"E": "Linf", "A": "A", "gamma": "alpha"})
    return {f.name: f for f in (chinchilla, tied, kaplan, kaplan_e, constrained, envelope)}


BUILTIN = _builtins()


def parse_fix(items) -> dict:
    """{name: value} from ``["E=1.6", "alpha=0.3,beta=0.3"]`` (repeatable, comma-separated)."""
    fixed = {}
    for item in items or ():
        for part in str(item).split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            try:
                fixed[name.strip()] = float(value)
            except ValueError:
                sep = ""
            if not sep or not name.strip():
                raise AnalysisError(f"--fix expects NAME=VALUE (e.g. E=1.6), got {part.strip()!r}")
    return fixed


def with_fixed(form: LawForm, fixed: dict) -> dict:
    """Validate ``fixed`` against the form: known parameters, positive where the scale is log."""
    for name, value in fixed.items():
        p = form.parameter(name)
        if p.scale == "log" and not value > 0:
            raise AnalysisError(f"--fix {name}={value:g}: {name} is positive in law {form.name!r}")
    if len(fixed) >= len(form.parameters):
        raise AnalysisError(f"--fix pins every parameter of law {form.name!r}: nothing is left to fit")
    return dict(fixed)


