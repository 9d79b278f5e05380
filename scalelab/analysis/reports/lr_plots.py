"""Figures of a learning-rate law fit: each cell's sweep with its parabola, and lr* against N and D
with the fitted law (the report's conventions: scalelab/analysis/reports/plots.py)."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from scalelab.analysis.hyper.lr_law import LrLawFit
from scalelab.analysis.reports.plots import (
    LABEL_D,
    LABEL_LOSS,
    LABEL_N,
    add_legend,
    log_axis,
    new_figure,
    save,
    styled,
)

LABEL_LR = "Peak learning rate"
MAX_LAW_LINES = 4  # law lines per panel, at values of the other variable


@styled
def lr_sweeps(fit: LrLawFit) -> Figure:
    """Loss against lr for every cell: points, the parabola over its fitted points, the optimum
    (a star); unbracketed cells drawn hollow and dashed."""
    fig, (ax,) = new_figure(width=8.4, height=4.6)
    fig.subplots_adjust(right=0.72)  # the legend goes to the right of the axes
    colors = colormaps["viridis"](np.linspace(0, 0.9, max(len(fit.cells), 1)))
    for cell, color in zip(fit.cells, colors):
        face = color if cell.bracketed else "none"
        ax.plot(cell.lrs, cell.losses, "o", mfc=face, mec=color, ms=4,
                label=cell.cell + ("" if cell.bracketed else " (unbracketed)"))
        if cell.coeffs:
            lo, hi = cell.window
            x = np.linspace(np.log(cell.lrs[lo]), np.log(cell.lrs[hi - 1]), 60)
            ax.plot(np.exp(x), np.polyval(cell.coeffs, x), "-" if cell.bracketed else "--", color=color, lw=1)
        if cell.bracketed:
            ax.plot(cell.lr_opt, np.polyval(cell.coeffs, np.log(cell.lr_opt)), "*", color=color, ms=9, mec="k",
                    mew=0.4)
    log_axis(ax.xaxis)
    ax.set_xlabel(LABEL_LR)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title("Learning-rate sweeps per cell (stars: parabola optima)")
    add_legend(ax, fontsize=6, ncol=2 if len(fit.cells) > 16 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _levels(values) -> np.ndarray:
    """At most MAX_LAW_LINES of the distinct values (spread over their range)."""
    distinct = np.unique(values)
    if len(distinct) <= MAX_LAW_LINES:
        return distinct
    return distinct[np.unique(np.linspace(0, len(distinct) - 1, MAX_LAW_LINES).round().astype(int))]


@styled
def lr_law_figure(fit: LrLawFit) -> Figure:
    """lr_opt of the used cells against N (coloured by D) and against D (coloured by N), with the
    law drawn at a few values of the other variable (B at its median, when the law has it)."""
    fig, axes = new_figure(width=9.6, height=4.0, ncols=2, top=0.88)
    law, used = fit.law, fit.used
    lr = np.array([c.lr_opt for c in used])
    values = {v: np.array([c.values[v] for c in used]) for v in ("N", "D", "B") if all(v in c.values for c in used)}
    b = float(np.median(values["B"])) if law.r is not None else None
    for ax, (x_name, other, x_label) in zip(axes, (("N", "D", LABEL_N), ("D", "N", LABEL_D))):
        levels = _levels(values[other])
        cmap = colormaps["plasma"](np.linspace(0.05, 0.8, len(levels)))
        nearest = np.abs(np.log(values[other])[:, None] - np.log(levels)[None, :]).argmin(axis=1)
        for k, (level, color) in enumerate(zip(levels, cmap)):
            mask = nearest == k
            ax.plot(values[x_name][mask], lr[mask], "o", color=color, ms=5, label=f"{other}={level:.3g}")
            grid = np.geomspace(values[x_name].min() / 1.5, values[x_name].max() * 1.5, 50)
            law_lr = [law.lr(g, level, b) if x_name == "N" else law.lr(level, g, b) for g in grid]
            ax.plot(grid, law_lr, "-", color=color, lw=1)
        log_axis(ax.xaxis)
        log_axis(ax.yaxis)
        ax.set_xlabel(x_label)
        ax.set_ylabel("Optimal peak learning rate lr*")
        add_legend(ax, fontsize=6.5)
    terms = f"N^{law.p:.3f} D^{law.q:.3f}" + (f" B^{law.r:.3f}" if law.r is not None else "")
    fig.suptitle(f"lr* = {law.c:.3g} {terms}   ({len(used)} cells; lines: the law)", fontsize=10)
    return fig


def save_figures(fit: LrLawFit, out_dir) -> list:
    """lr_sweeps.{png,svg,pdf} and lr_law.{png,svg,pdf} in `out_dir`."""
    return save(lr_sweeps(fit), out_dir, "lr_sweeps") + save(lr_law_figure(fit), out_dir, "lr_law")
