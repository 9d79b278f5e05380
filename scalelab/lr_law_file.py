"""The learning-rate law file: lr* = c * N^p * D^q [* B^r], as `scalelab analyze lr-law` writes it
and `optimizer.lr_law=PATH` reads it.

N is the non-embedding parameter count as `ledger.Shape` counts it (the runs table's `params`),
D the tokens a run trains (the table's `tokens`: `data.tokens` in whole steps), B the batch in
tokens (`train.batch_size * data.seq_len`, the table's `batch_size * seq_len`) when the law has
it. The file also records the range of N, D (and B) of the cells the law was fitted on; a run
far outside it is an extrapolation, which `outside` describes (a warning, not an error).

This module sits at the bottom (numpy-free JSON) so that building a run does not import the
analysis layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

KIND = "scalelab.lr_law"
VERSION = 1
FORM = "lr = c * N^p * D^q * B^r"
VARIABLES = ("N", "D", "B")
EXPONENTS = {"N": "p", "D": "q", "B": "r"}
# how far past the fitted range (as a factor) a run may go before it counts as extrapolation
RANGE_SLACK = 2.0


class LawFileError(ValueError):
    """A law file that cannot be read or does not describe a law."""


@dataclass(frozen=True)
class LrLaw:
    """A fitted learning-rate law; `over` names its variables, ("N", "D") or ("N", "D", "B")."""

    c: float
    p: float
    q: float
    r: float | None = None
    validity: dict = field(default_factory=dict)  # variable -> [low, high] of the fitted cells
    extra: dict = field(default_factory=dict)  # everything else the file holds (intervals, cells, ...)

    @property
    def over(self) -> tuple[str, ...]:
        return VARIABLES if self.r is not None else VARIABLES[:2]

    def lr(self, n: float, d: float, b: float | None = None) -> float:
        """The law's peak learning rate for N, D (and B, when the law has it)."""
        log_lr = math.log(self.c) + self.p * math.log(n) + self.q * math.log(d)
        if self.r is not None:
            if b is None:
                raise LawFileError("this law depends on the batch B (tokens per step): give b")
            log_lr += self.r * math.log(b)
        return math.exp(log_lr)

    def outside(self, n: float, d: float, b: float | None = None, slack: float = RANGE_SLACK) -> list[str]:
        """'N=3.2e+06 beyond the fitted [1e+04, 2e+05]' for each variable past its range by `slack`x."""
        notes = []
        for name, value in zip(self.over, (n, d, b)):
            bounds = self.validity.get(name)
            if not bounds or value is None:
                continue
            low, high = bounds
            if value < low / slack or value > high * slack:
                notes.append(f"{name}={value:.3g} beyond the fitted [{low:.3g}, {high:.3g}]")
        return notes

    def to_dict(self) -> dict:
        out = {"kind": KIND, "version": VERSION, "form": FORM, "over": list(self.over),
               "c": self.c, "p": self.p, "q": self.q, "r": self.r,
               "validity": {k: list(v) for k, v in self.validity.items()}}
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> LrLaw:
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise LawFileError(f"not a learning-rate law (expected \"kind\": \"{KIND}\", "
                               "as `scalelab analyze lr-law` writes)")
        try:
            c, p, q = (float(data[k]) for k in ("c", "p", "q"))
            r = None if data.get("r") is None else float(data["r"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LawFileError(f"needs numbers c, p, q (and r or null): {exc}") from exc
        if not (c > 0 and all(math.isfinite(v) for v in (c, p, q, r if r is not None else 0.0))):
            raise LawFileError(f"needs c > 0 and finite exponents; got c={c}, p={p}, q={q}, r={r}")
        validity = data.get("validity") or {}
        if not isinstance(validity, dict):
            raise LawFileError("validity must map N, D (B) to [low, high]")
        try:
            validity = {k: (float(v[0]), float(v[1])) for k, v in validity.items() if k in VARIABLES}
        except (TypeError, ValueError, IndexError) as exc:
            raise LawFileError(f"validity must map N, D (B) to [low, high]: {exc}") from exc
        known = {"kind", "version", "form", "over", "c", "p", "q", "r", "validity"}
        return cls(c, p, q, r, validity, {k: v for k, v in data.items() if k not in known})


def read_law(path) -> LrLaw:
    """The law in the JSON file `path`; LawFileError says what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LawFileError(f"{path}: no such file (write one with `scalelab analyze lr-law TABLE`)") from exc
    except (OSError, ValueError) as exc:
        raise LawFileError(f"{path}: cannot read it as JSON: {exc}") from exc
    try:
        return LrLaw.from_dict(data)
    except LawFileError as exc:
        raise LawFileError(f"{path}: {exc}") from exc


def write_law(law: LrLaw, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(law.to_dict(), indent=2, default=float) + "\n")
    return path
