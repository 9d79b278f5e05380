"""FitResult: what every fit returns, whatever the approach."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

APPROACH_NAMES = {
    "kaplan": "Kaplan et al. (2020): L(N), L(D) and the L(C) frontier",
    "1": "Chinchilla approach 1: lower envelope of training curves",
    "2": "Chinchilla approach 2: IsoFLOP profiles",
    "3": "Chinchilla approach 3: parametric fit L(N, D) = E + A/N^alpha + B/D^beta",
}


def json_safe(value):
    """Plain JSON types: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


@dataclass
class FitResult:
    """The outcome of one scaling-law fit.

    ``a``/``b`` are the compute-optimal exponents (N_opt = G*C^a, D_opt = H*C^b).
    ``frontier`` is the compute-optimal loss law L(C) = E + A*C^-gamma (for
    approach 3 it is the exact L(N_opt(C), D_opt(C)), written the same way).
    ``ci`` maps a quantity name to its bootstrap (low, high) 95% interval.
    When ``converged`` is False, ``message`` says why and the numbers must not be used.
    ``status`` is "determined" or "not determined" (with ``reason``): a converged
    fit can still be degenerate or too unstable to report (see ``verdict.assess``).
    ``allocate`` (approach 3) maps C to the exact (N_opt, D_opt, L_opt) under the
    study's C(N, D); without it the power laws and the frontier are used.
    """

    approach: str
    converged: bool
    message: str = ""
    n_runs: int = 0
    params: dict = field(default_factory=dict)
    a: float = math.nan
    b: float = math.nan
    G: float = math.nan
    H: float = math.nan
    frontier: dict | None = None
    allocation: list = field(default_factory=list)
    ci: dict = field(default_factory=dict)
    bootstrap: dict = field(default_factory=dict)
    holdout: list = field(default_factory=list)
    conventions: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    status: str = ""
    reason: str = ""
    samples: list = field(default_factory=list, repr=False)   # bootstrap fits (summaries), not in to_dict
    allocate: object = field(default=None, repr=False, compare=False)   # not in to_dict
    # a law form's fit: its LawForm (``details["law"]`` is its record), which predicts; not in to_dict
    law: object = field(default=None, repr=False, compare=False)

    @property
    def title(self) -> str:
        law = (self.details or {}).get("law")
        if self.approach == "3" and law:
            return f"Chinchilla approach 3 with the {law['name']} law: parametric fit L(N, D) = {law['expression']}"
        return APPROACH_NAMES.get(self.approach, self.approach)

    @property
    def allocates(self) -> bool:
        """False for a law form with no compute-optimal allocation (Kaplan's L(N, D), an envelope L(C))."""
        return bool((self.details or {}).get("law", {}).get("allocates", True))

    @property
    def determined(self) -> bool:
        return self.converged and self.status == "determined"

    def n_opt(self, flops):
        if self.allocate is not None:
            return self.allocate(flops)[0]
        return self.G * np.asarray(flops, dtype=float) ** self.a

    def d_opt(self, flops):
        if self.allocate is not None:
            return self.allocate(flops)[1]
        return self.H * np.asarray(flops, dtype=float) ** self.b

    def loss_opt(self, flops):
        """Compute-optimal loss at C (approach 3: exact; others: the fitted frontier; NaN without one)."""
        if self.allocate is not None:
            return self.allocate(flops)[2]
        flops = np.asarray(flops, dtype=float)
        if not self.frontier:
            return np.full_like(flops, np.nan)
        f = self.frontier
        return f["E"] + f["A"] * flops ** (-f["gamma"])

    def predict_loss(self, params, tokens, flops):
        """Predicted loss of runs: L(N, D) for approach 3, the L(C) frontier otherwise."""
        if self.approach == "3" and self.law is not None:
            return self.predict_table({"params": params, "tokens": tokens, "flops": flops})
        if self.approach == "3":
            p = self.params
            n = np.asarray(params, dtype=float)
            d = np.asarray(tokens, dtype=float)
            return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]
        return self.loss_opt(flops)

    def predict_table(self, table):
        """Predicted loss of each row of a table (or mapping of columns) with every column the law needs."""
        if self.approach == "3" and self.law is not None:
            return self.law.predict(self.params, table)
        return self.predict_loss(table["params"], table["tokens"], table["flops"])

    def summary(self) -> dict:
        """The scalar numbers (for bootstrap samples and comparisons)."""
        out = {"a": self.a, "b": self.b, "G": self.G, "H": self.H}
        out.update(self.params)
        if self.frontier:
            out.update({f"frontier_{k}": v for k, v in self.frontier.items()})
        return out

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("samples", "allocate", "law")}
        data["title"] = self.title
        return json_safe(data)
