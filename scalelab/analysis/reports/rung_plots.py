"""The prediction rung's figure: the study's law extrapolated to the rung with its band, and the rung's
measured sizes against their predictions (the report's conventions: scalelab/analysis/reports/plots.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scalelab.analysis.decide.rung import study_fpt
from scalelab.analysis.fitting.law_files import law_from_dict
from scalelab.analysis.fitting.optimum import law_optimum
from scalelab.analysis.fitting.predict import law_and_params, mean_draws
from scalelab.analysis.reports.plots import (
    LABEL_C,
    LABEL_LOSS,
    LABEL_N,
    add_legend,
    log_axis,
    new_figure,
    styled,
)

FORM_STYLES = {"chinchilla": ":", "kaplan": "--", "kaplan-e": "-."}


def frontier_band(fit: dict, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The law's compute-optimal loss L_opt(C) at `flops`, and its bootstrap 95% band (2, len(flops))."""
    form, params, samples = law_and_params(fit)
    fpt = study_fpt(fit)

    def optimum(values):
        return law_optimum(lambda n, d: form.predict(values, {"params": n, "tokens": d}), fpt, flops)[2]

    central = optimum(params)
    if len(samples) < 2:
        return central, None
    with np.errstate(all="ignore"):
        draws = np.array([optimum(s) for s in samples])
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    return central, (np.percentile(draws, [2.5, 97.5], axis=0) if len(draws) >= 2 else None)


@styled
def rung_figure(table: pd.DataFrame, plan: dict, verified: dict) -> Figure:
    """Left: the study's runs, its law's frontier extrapolated past the rung with its band, the rung's
    measured sizes and their form-aware intervals. Right: the rung's IsoFLOP profile, the law and the
    rival forms against the measured sizes."""
    fig, (left, right) = new_figure(width=11.0, height=4.4, ncols=2)
    budget, sizes = float(plan["budget"]), verified["sizes"]
    flops = np.logspace(np.log10(table["flops"].min()) - 0.1, np.log10(budget) + 0.2, 40)
    central, band = frontier_band(plan["fit"], flops)
    left.scatter(table["flops"], table["loss"], s=10, color="0.6", label="the study's runs", zorder=2)
    left.plot(flops, central, color="C0", lw=1.4, label=f"law ({plan.get('law')}): L_opt(C)")
    if band is not None:
        left.fill_between(flops, band[0], band[1], color="C0", alpha=0.15, lw=0, label="its 95% band (parameters)")
    left.axvline(float(plan.get("study_largest_budget") or table["flops"].max()), color="0.5", lw=0.8, ls=":")
    for k, row in enumerate(sizes):
        shift = budget * 1.12 ** (k - (len(sizes) - 1) / 2)
        name = row["model"] or f"N {row['params']:.3g}"
        left.plot(shift, row["measured"], "o", color=f"C{k + 1}", ms=6, zorder=4, label=f"{name}: measured")
        band_k = row.get("form_interval") or row.get("prediction_interval")
        if band_k:
            centre = row.get("form_averaged", row["predicted"])
            left.errorbar(shift, centre, yerr=[[centre - band_k[0]], [band_k[1] - centre]], fmt="_", color=f"C{k + 1}",
                          capsize=3, lw=1, zorder=3)
    log_axis(left.xaxis)
    log_axis(left.yaxis, loss=True)
    left.set_xlabel(LABEL_C)
    left.set_ylabel(LABEL_LOSS)
    left.set_title(f"The law {verified.get('ratio') or 0:.3g}x beyond its runs (bars: 95% intervals)")
    add_legend(left, fontsize=7, loc="upper right")
    _profile(right, plan, verified)
    return fig


def _profile(ax, plan: dict, verified: dict) -> None:
    budget, fit = float(plan["budget"]), plan["fit"]
    fpt = study_fpt(fit)
    params = [r["params"] for r in verified["sizes"]]
    n = np.logspace(np.log10(min(params)) - 0.15, np.log10(max(params)) + 0.15, 50)
    points = pd.DataFrame({"params": n, "tokens": budget / fpt(n), "flops": budget})
    form, values, _ = law_and_params(fit)
    ax.plot(n, form.predict(values, points), color="C0", lw=1.4, label=f"law ({plan.get('law')})")
    draws = mean_draws(fit, points)
    if len(draws) >= 2:
        low, high = np.percentile(draws, [2.5, 97.5], axis=0)
        ax.fill_between(n, low, high, color="C0", alpha=0.15, lw=0)
    rivals = plan.get("rival_forms") or {}
    for name, style in FORM_STYLES.items():
        rival = rivals.get(name) or {}
        if rival.get("fitted") and name != plan.get("law") and name in rivals.get("supported", [name]):
            weight = (rivals.get("weights") or {}).get(name)
            label = f"form {name}" + ("" if weight is None else f" (weight {weight:.2f})")
            ax.plot(n, law_from_dict(rival["law"]).predict(rival["params"], points), color="0.3", ls=style,
                    lw=1, label=label)
    measured = [r["measured"] for r in verified["sizes"]]
    ax.plot(params, measured, "o", color="k", ms=6, zorder=4, label="measured (mean of seeds)")
    for r in verified["sizes"]:
        band = r.get("form_interval")
        if band:
            centre = r.get("form_averaged", r["predicted"])
            ax.errorbar(r["params"] * 1.03, centre, yerr=[[centre - band[0]], [band[1] - centre]], fmt="s",
                        color="C3", ms=4, capsize=3, lw=1, zorder=3)
    ax.plot([], [], "s", color="C3", ms=4, label="form-averaged prediction, 95% interval")
    log_axis(ax.xaxis)
    ax.set_xlabel(LABEL_N)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title(f"The rung's IsoFLOP profile at C = {budget:.3g}")
    add_legend(ax, fontsize=7, loc="best")
