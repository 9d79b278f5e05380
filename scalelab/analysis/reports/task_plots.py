"""A task's figure: accuracy against compute with the fitted chain (the best accuracy reachable at
each C over the study's range of sizes) and its bootstrap band, and step 2 (accuracy against the
task's bits per byte) with its sigmoid (scalelab/analysis/tasks/chain.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scalelab.analysis.reports.plots import LABEL_C, add_legend, log_axis, new_figure, styled
from scalelab.analysis.tasks.chain import TaskChain, best_over_sizes, runs_for, sigmoid


@styled
def task_figure(table: pd.DataFrame, chain: TaskChain, holdout: dict | None = None) -> Figure:
    runs = runs_for(table, chain.task, chain.metric)
    fig, (ax, ax2) = new_figure(width=10.0, ncols=2, top=0.9)
    flops = np.logspace(np.log10(runs["flops"].min()) - 0.2, np.log10(runs["flops"].max()) + 1.0, 60)
    sizes = np.logspace(np.log10(runs["params"].min()) - 1, np.log10(runs["params"].max()) + 1.5, 60)
    ax.scatter(runs["flops"], runs["acc"], s=14, color="#7f7f7f", alpha=0.7, label="runs")
    ax.plot(flops, best_over_sizes(chain, flops, sizes), color="#2ca02c", label="chain: best over sizes")
    if len(chain.draws) >= 10:
        with np.errstate(all="ignore"):
            band = np.array([best_over_sizes(chain, flops, sizes, v, s) for v, s in chain.draws])
        ax.fill_between(flops, *np.nanquantile(band, [0.025, 0.975], axis=0), color="#2ca02c", alpha=0.15,
                        label="95% band")
    if holdout:
        low, high = holdout["interval"] or (holdout["predicted"], holdout["predicted"])
        ax.errorbar([holdout["budget"]], [holdout["predicted"]], yerr=[[holdout["predicted"] - low],
                    [high - holdout["predicted"]]], fmt="s", color="#d62728", capsize=3, label="held-out prediction")
        ax.scatter([holdout["budget"]], [holdout["measured"]], marker="*", s=80, color="black", zorder=5,
                   label="held-out measured")
    ax.axhline(chain.chance, color="black", linewidth=0.6, linestyle=":", label="chance")
    log_axis(ax.xaxis)
    ax.set_xlabel(LABEL_C)
    ax.set_ylabel(f"{chain.task} {chain.metric}")
    ax.set_title("accuracy against compute" + ("" if chain.determined else " (not determined)"))
    add_legend(ax, fontsize=7)
    grid = np.linspace(runs["loss"].min() * 0.8, runs["loss"].max() * 1.05, 100)
    s = chain.sigmoid
    ax2.scatter(runs["loss"], runs["acc"], s=14, color="#7f7f7f", alpha=0.7)
    ax2.plot(grid, sigmoid(grid, chain.chance, s["ceiling"], s["mid"], s["k"]), color="#1f77b4",
             label=f"sigmoid: ceiling {s['ceiling']:.2f}, midpoint {s['mid']:.2f}")
    ax2.axhline(chain.chance, color="black", linewidth=0.6, linestyle=":")
    ax2.set_xlabel("bits per byte of the right choice")
    ax2.set_ylabel(chain.metric)
    ax2.set_title("step 2: accuracy against bits per byte")
    add_legend(ax2, fontsize=7)
    return fig
