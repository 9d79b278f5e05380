"""Candidate runs for ``suggest``: model sizes times token counts, each with its FLOPs.

Sizes are model names (a YAML of a config directory's ``model/`` group, or of the package's own
ladder ``scalelab/configs/model/``; N is the ledger's non-embedding count of that shape) or
plain parameter counts. Tokens come from a log grid of tokens per parameter, rounded to three
significant digits so that the override ``data.tokens=T`` is the count whose FLOPs were priced.
FLOPs are C = f(N) * D with f the table's own flops/tokens as a function of N
(``flops_model.flops_per_token_model``): the count the table's runs were recorded with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalelab import ledger
from scalelab.analysis.errors import AnalysisError

DEFAULT_TOKENS_PER_PARAM = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
PACKAGE_MODELS = Path(__file__).resolve().parents[2] / "configs" / "model"


@dataclass(frozen=True)
class Candidate:
    """One run that could be bought: N, D, its FLOPs and, when sized by name, the model."""

    params: float
    tokens: float
    flops: float
    model: str | None = None

    @property
    def label(self) -> str:
        size = self.model or f"N={tokens_text(self.params)}"
        return f"{size} D={tokens_text(self.tokens)}"

    def override(self) -> str:
        return f"model={self.model} data.tokens={tokens_text(self.tokens)}"


def tokens_text(tokens: float) -> str:
    """'3.16e6' for 3160000: a whole number Hydra reads as a float, without '+' or leading zeros."""
    mantissa, _, exponent = f"{tokens:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def round_tokens(tokens) -> np.ndarray:
    """Three significant digits, and whole."""
    return np.array([max(1.0, round(float(f"{t:.3g}"))) for t in np.atleast_1d(tokens)])


def model_params(name: str, config_dir=None) -> float:
    """N of a named model: the ledger's non-embedding count of its YAML (which does not depend on
    the vocabulary or the sequence length)."""
    import yaml

    places = []
    if config_dir:
        places += [Path(config_dir) / "model" / f"{name}.yaml", Path(config_dir) / f"{name}.yaml"]
    places.append(PACKAGE_MODELS / f"{name}.yaml")
    path = next((p for p in places if p.is_file()), None)
    if path is None:
        raise AnalysisError(f"--candidates: no model {name!r} in {', '.join(str(p.parent) for p in places)}; give "
                            "a name of the ladder (p15k ... p7b), --config-dir DIR with DIR/model/NAME.yaml, or "
                            "parameter counts (e.g. 1e6,3e6)")
    spec = yaml.safe_load(path.read_text()) or {}
    try:
        shape = ledger.Shape(d_model=int(spec["d_model"]), n_layers=int(spec["n_layers"]),
                             n_heads=int(spec["n_heads"]), n_kv_heads=int(spec.get("n_kv_heads", spec["n_heads"])),
                             d_ff=int(spec["d_ff"]), vocab=1, seq_len=1, head_dim=int(spec.get("head_dim", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnalysisError(f"{path}: not a model config (needs d_model, n_layers, n_heads, d_ff): {exc}") from None
    return float(ledger.non_embedding_params(shape))


def resolve_sizes(items, config_dir=None) -> list[tuple[str | None, float]]:
    """[(model name or None, N)] from names and numbers ('p50k,p150k' or '1e6,3e6' or a list)."""
    if isinstance(items, str):
        items = [part for part in items.split(",")]
    sizes = []
    for item in items:
        if isinstance(item, tuple):
            sizes.append(item)
            continue
        text = str(item).strip()
        if not text:
            continue
        try:
            value = float(text)
        except ValueError:
            sizes.append((text, model_params(text, config_dir)))
            continue
        if not value > 0:
            raise AnalysisError(f"--candidates: a parameter count must be positive, got {text!r}")
        sizes.append((None, value))
    if not sizes:
        raise AnalysisError("--candidates: no sizes given")
    return sizes


def table_sizes(table) -> list[tuple[str | None, float]]:
    """The table's own sizes (with their names when it has a ``model`` column that names each one)."""
    params = table["params"].to_numpy(dtype=float)
    names = table["model"] if "model" in table.columns else None
    sizes = []
    for n in np.unique(params):
        name = None
        if names is not None:
            found = {str(v) for v in names[params == n] if isinstance(v, str) and v}
            name = found.pop() if len(found) == 1 else None
        sizes.append((name, float(n)))
    return sizes


def make_candidates(sizes, tokens_per_param, fpt, exclude=None) -> list[Candidate]:
    """Every size times every tokens-per-parameter ratio; ``exclude`` ((N, D) pairs already run) left out."""
    ratios = np.asarray(tokens_per_param, dtype=float)
    if not len(ratios) or not np.all(ratios > 0):
        raise AnalysisError(f"--tokens-per-param: positive ratios D/N needed, got {list(ratios)}")
    seen = {(round(float(n), 6), round(float(d), 6)) for n, d in (exclude or ())}
    out = []
    for name, n in sizes:
        for d in round_tokens(ratios * n):
            if (round(float(n), 6), round(float(d), 6)) in seen:
                continue
            seen.add((round(float(n), 6), round(float(d), 6)))
            out.append(Candidate(float(n), float(d), float(fpt(n) * d), name))
    return out


def overrides_text(chosen) -> str:
    """One line per run: ``model=NAME data.tokens=T`` when every run is sized by name, else CSV rows."""
    if chosen and all(c.model for c in chosen):
        return "".join(c.override() + "\n" for c in chosen)
    rows = ["params,tokens,flops"] + [f"{c.params:.6g},{c.tokens:.6g},{c.flops:.6g}" for c in chosen]
    return "\n".join(rows) + "\n"
