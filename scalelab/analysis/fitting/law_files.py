"""Reading a law form: a built-in name, a law file (YAML: a form fitted like the built-in ones without
writing code) or a fit's record of it (``resolve_law``, ``law_from_dict``).

    name: chinchilla-as-yaml
    expression: E + A / N**alpha + B / D**beta     # numbers, names, + - * / **, exp log log1p expm1 sqrt
    parameters:                                    # fitted in this order (the grid is their product)
      A: {scale: log, log_grid: [0, 5, 10, 15, 20, 25]}   # positive, fitted as log A
      B: {scale: log, grid: [1, 150, 22000]}              # a log-scale grid may be given in natural units
      E: {scale: log, log_grid: [-1, 0, 1], bounds: [0.5, 10]}
      alpha: {grid: [0, 0.5, 1], bounds: [0, 3]}          # linear scale (the default); bounds natural
      beta: {grid: [0, 0.5, 1]}
    variables: {M: tokens / params}    # optional: named expressions over columns (N, D, C, M built in)
    derived: {gamma: alpha * beta / (alpha + beta)}   # optional: reported with the parameters
    min_distinct: {N: 3}               # optional: distinct values each variable needs (default 2)
    allocates: true                    # optional: E, A, B, alpha, beta mean what they do in Chinchilla's
                                       # law (with fresh data), so the compute-optimal allocation applies

Names in the expression that are neither parameters nor variables are columns of the runs table
(``N``, ``D``, ``C`` stand for ``params``, ``tokens``, ``flops``; ``M`` for tokens/params).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.fitting import expression as law_expr
from scalelab.analysis.fitting.forms import ALIASES, BUILTIN, CHINCHILLA_NAMES, LawForm, Parameter

TOP_KEYS = {"name", "expression", "parameters", "variables", "derived", "min_distinct", "allocates", "description"}
PARAM_KEYS = {"scale", "grid", "log_grid", "bounds"}


def load_law_file(path) -> LawForm:
    """The LawForm a YAML file declares; AnalysisError names the file and the key at fault."""
    import yaml
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AnalysisError(f"cannot read law file {str(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise AnalysisError(f"law file {str(path)!r} is not valid YAML: {exc}") from None
    try:
        return law_from_mapping(data, source=str(path))
    except AnalysisError as exc:
        raise AnalysisError(f"law file {str(path)!r}: {exc}") from None


def law_from_mapping(data, source: str = "file") -> LawForm:
    """A LawForm from the mapping a law file holds."""
    if not isinstance(data, dict):
        raise AnalysisError("expected a mapping with keys name, expression and parameters")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise AnalysisError(f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(TOP_KEYS))})")
    for key in ("expression", "parameters"):
        if key not in data:
            raise AnalysisError(f"the key {key!r} is missing")
    expression = law_expr.parse(data["expression"])
    if not isinstance(data["parameters"], dict) or not data["parameters"]:
        raise AnalysisError("'parameters' must map each parameter name to its scale, grid and bounds")
    parameters = tuple(_parameter(name, spec) for name, spec in data["parameters"].items())
    variables = _expressions(data.get("variables"), "variables")
    derived = _expressions(data.get("derived"), "derived")
    names = {p.name for p in parameters}
    clash = sorted(names & (set(variables) | set(ALIASES) | {"M"}))
    if clash:
        raise AnalysisError(f"parameter name(s) {', '.join(clash)} are also variable names")
    unused = sorted(names - set(expression.names))
    if unused:
        raise AnalysisError(f"parameter(s) {', '.join(unused)} do not appear in the expression")
    allocates = bool(data.get("allocates", False))
    missing = [n for n in CHINCHILLA_NAMES if n not in names and n not in derived]
    if allocates and missing:
        raise AnalysisError(f"'allocates: true' needs the parameters (or derived values) {', '.join(CHINCHILLA_NAMES)}; "
                            f"missing {', '.join(missing)}")
    min_distinct = {str(k): int(v) for k, v in (data.get("min_distinct") or {}).items()}
    return LawForm(str(data.get("name") or Path(source).stem), expression.text, parameters, variables, derived,
                   min_distinct=min_distinct, allocates=allocates, source=source)


def _expressions(mapping, key: str) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise AnalysisError(f"{key!r} must map names to expressions")
    out = {}
    for name, text in mapping.items():
        law_expr.parse(str(text))
        out[str(name)] = str(text)
    return out


def _numbers(values, what: str) -> tuple:
    if not isinstance(values, (list, tuple)) or not values:
        raise AnalysisError(f"{what} must be a non-empty list of numbers")
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise AnalysisError(f"{what} must be a list of numbers, got {values!r}") from None


def _parameter(name, spec) -> Parameter:
    name = str(name)
    if not name.isidentifier():
        raise AnalysisError(f"parameter name {name!r} is not a valid name")
    spec = spec or {}
    if not isinstance(spec, dict) or set(spec) - PARAM_KEYS:
        raise AnalysisError(f"parameter {name}: expected a mapping with keys {', '.join(sorted(PARAM_KEYS))}")
    scale = spec.get("scale", "linear")
    if scale not in ("linear", "log"):
        raise AnalysisError(f"parameter {name}: scale must be linear or log, got {scale!r}")
    if "grid" in spec and "log_grid" in spec:
        raise AnalysisError(f"parameter {name}: give grid or log_grid, not both")
    if "log_grid" in spec:
        if scale != "log":
            raise AnalysisError(f"parameter {name}: log_grid needs scale: log")
        grid = _numbers(spec["log_grid"], f"parameter {name}: log_grid")
    else:
        grid = _numbers(spec.get("grid", [1.0 if scale == "log" else 0.0]), f"parameter {name}: grid")
        if scale == "log":
            if min(grid) <= 0:
                raise AnalysisError(f"parameter {name}: a log-scale grid must be positive")
            grid = tuple(float(np.log(v)) for v in grid)
    bounds = spec.get("bounds", [None, None])
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise AnalysisError(f"parameter {name}: bounds must be [low, high] (null for none)")
    bounds = tuple(None if b is None else float(b) for b in bounds)
    if None not in bounds and not bounds[0] < bounds[1]:
        raise AnalysisError(f"parameter {name}: bounds {list(bounds)} need low < high")
    return Parameter(name, scale, grid, bounds)


def resolve_law(law) -> LawForm:
    """A LawForm from a form, a built-in name or the path of a law file (YAML)."""
    if isinstance(law, LawForm):
        return law
    text = str(law).strip()
    if text.lower() in BUILTIN:
        return BUILTIN[text.lower()]
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_law_file(text)
    raise AnalysisError(f"unknown law {law!r}: choose {', '.join(BUILTIN)} or give a law file (.yaml)")


def law_from_dict(data: dict) -> LawForm:
    """The form a fit JSON's ``details.law`` describes (built-ins by name, files from their stored spec)."""
    if data.get("source") == "built-in" and data.get("name") in BUILTIN:
        return BUILTIN[data["name"]]
    params = tuple(Parameter(p["name"], p.get("scale", "linear"), bounds=tuple(p.get("bounds", (None, None))))
                   for p in data["parameters"])
    return LawForm(data.get("name", "law"), data["expression"], params, dict(data.get("variables", {})),
                   dict(data.get("derived", {})), allocates=bool(data.get("allocates", False)),
                   source=data.get("source", "file"))
