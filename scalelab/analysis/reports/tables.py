"""Markdown (and plain-text) rendering of fit results: tables that read well on their own."""

from __future__ import annotations

import math

from scalelab.analysis.result import FitResult

PARAM_NOTES = {
    "E": "irreducible loss", "A": "N-term coefficient", "B": "D-term coefficient",
    "alpha": "N exponent", "beta": "D exponent",
    "G": "N_opt = G*C^a", "a": "N_opt exponent", "H": "D_opt = H*C^b", "b": "D_opt exponent",
    "E_N": "L(N) floor", "Nc": "L(N) scale", "alpha_N": "L(N) exponent",
    "E_D": "L(D) floor", "Dc": "L(D) scale", "alpha_D": "L(D) exponent",
    "E_C": "L(C) floor", "Cc": "L(C) scale", "alpha_C": "L(C) exponent",
}


def num(value, digits: int = 3) -> str:
    """Short number: 3 significant digits, scientific when large or small."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "inf" if value == math.inf else "n/a"
    value = float(value)
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits + 1}g}"


def with_ci(value, ci, digits: int = 3) -> str:
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{num(value, digits)} [{num(ci[0], digits)}, {num(ci[1], digits)}]"
    return num(value, digits)


def fixed(value, decimals: int = 4) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{decimals}f}"


def exponent_ci(value, ci, decimals: int = 4) -> str:
    """Exponents read best with a fixed number of decimals: 0.4516 [0.4432, 0.4601]."""
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{fixed(value, decimals)} [{fixed(ci[0], decimals)}, {fixed(ci[1], decimals)}]"
    return fixed(value, decimals)


def is_exponent(name: str) -> bool:
    return name in ("a", "b", "alpha", "beta", "gamma") or name.startswith("alpha_")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def parameters_table(result: FitResult) -> str:
    rows = []
    names = list(result.params) + [k for k in ("a", "b") if k not in result.params]
    for name in names:
        value = result.params.get(name, getattr(result, name, None))
        shown = (exponent_ci if is_exponent(name) else with_ci)(value, result.ci.get(name))
        rows.append([name, shown, PARAM_NOTES.get(name, "")])
    if result.frontier:
        f = result.frontier
        rows.append(["frontier L(C)", f"{num(f['E'])} + {num(f['A'])} * C^-{fixed(f['gamma'])}",
                     "compute-optimal loss vs FLOPs"])
    ci_note = "value [95% CI]" if result.ci else "value"
    return table(["parameter", ci_note, "meaning"], rows)


def allocation_table(result: FitResult) -> str:
    rows = []
    for row in result.allocation:
        rows.append([num(row["budget"]), with_ci(row["N_opt"], row.get("N_opt_ci")),
                     with_ci(row["D_opt"], row.get("D_opt_ci")),
                     with_ci(row["tokens_per_param"], row.get("tokens_per_param_ci")),
                     with_ci(row["loss_opt"], row.get("loss_opt_ci"))])
    return table(["C (FLOPs)", "N_opt", "D_opt", "tokens/param", "loss at optimum"], rows)


def holdout_table(result: FitResult) -> str:
    rows, intervals = [], any("prediction_interval" in row for row in result.holdout)
    for row in result.holdout:
        name = row.get("model") or row.get("run_dir") or ""
        rows.append([name, num(row["params"]), num(row["tokens"]), num(row["flops"]), f"{row['loss']:.4f}",
                     f"{row['predicted']:.4f}", f"{100 * row['rel_error']:+.2f}%"])
        if intervals:
            low, high = row.get("prediction_interval") or (math.nan, math.nan)
            where = ("" if "inside_prediction_interval" not in row else
                     "inside" if row["inside_prediction_interval"] else "OUTSIDE")
            rows[-1].append(f"[{low:.4f}, {high:.4f}] {where}".strip())
    head = ["run", "N", "D", "C", "actual loss", "predicted", "relative error"]
    return table(head + ["95% prediction interval"] * intervals, rows)


def fit_text(result: FitResult) -> str:
    """A plain-text account of one fit, for the terminal."""
    lines = [f"{result.title} -- {result.n_runs} runs"]
    selection = (result.details or {}).get("law_selection")
    if selection:
        scores = ", ".join(f"{name} {c['aic']:.1f}" for name, c in selection["candidates"].items() if c["fitted"])
        lines.append(f"  law chosen by AIC: {selection['chosen']} (AIC {scores})")
    if not result.converged:
        lines.append(f"  FIT DID NOT CONVERGE: {result.message}")
        return "\n".join(lines)
    if result.status and result.status != "determined":
        lines.append(f"  NOT DETERMINED: {result.reason} (the numbers below are diagnostics, not results)")
    pinned = (result.details or {}).get("fixed", {})
    for name, value in result.params.items():
        shown = (exponent_ci if is_exponent(name) else with_ci)(value, None if name in pinned else result.ci.get(name))
        lines.append(f"  {name:<8} = {shown}" + (" (fixed)" if name in pinned else ""))
    if result.allocates:
        lines.append(f"  compute-optimal: N_opt ~ C^{exponent_ci(result.a, result.ci.get('a'))}, "
                     f"D_opt ~ C^{exponent_ci(result.b, result.ci.get('b'))}")
    if result.frontier:
        f = result.frontier
        lines.append(f"  frontier: L(C) = {num(f['E'])} + {num(f['A'])} * C^-{fixed(f['gamma'])}")
    if result.approach == "3":
        d = result.details
        lines.append(f"  objective {d['objective']:.6g} (best of {d['n_starts']} starts; "
                     f"{d['n_reached_best']} reached it)")
    lines.append(f"  {'C (FLOPs)':>10}  {'N_opt':>22}  {'D_opt':>22}  {'tokens/param':>22}  {'loss':>7}")
    for row in result.allocation:
        lines.append(f"  {num(row['budget']):>10}  {with_ci(row['N_opt'], row.get('N_opt_ci')):>22}  "
                     f"{with_ci(row['D_opt'], row.get('D_opt_ci')):>22}  "
                     f"{with_ci(row['tokens_per_param'], row.get('tokens_per_param_ci')):>22}  "
                     f"{num(row['loss_opt'], 4):>7}")
    if result.holdout:
        lines.append("  held-out runs (largest compute): actual -> predicted (relative error)")
        for row in result.holdout:
            inside = ""
            if "prediction_interval" in row:
                low, high = row["prediction_interval"]
                inside = (f", 95% prediction interval [{low:.4f}, {high:.4f}]: "
                          f"{'inside' if row['inside_prediction_interval'] else 'OUTSIDE'}")
            lines.append(f"    N={num(row['params'])} D={num(row['tokens'])} C={num(row['flops'])}: "
                         f"{row['loss']:.4f} -> {row['predicted']:.4f} ({100 * row['rel_error']:+.2f}%){inside}")
    if result.bootstrap:
        b = result.bootstrap
        lines.append(f"  bootstrap: {b['succeeded']} of {b['requested']} resamples fitted ({b['failed']} failed); "
                     f"{b['method']}")
    for key, value in result.conventions.items():
        lines.append(f"  convention {key}: {value}")
    return "\n".join(lines)
