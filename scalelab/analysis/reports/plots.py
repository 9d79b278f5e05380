"""Figures for the report (matplotlib, Agg canvas, PNG, SVG and PDF).

Figures are built on ``matplotlib.figure.Figure`` directly, so nothing here
touches pyplot's global state or the user's backend. Every function returns a
Figure; ``save`` writes it as ``<name>.png``, ``<name>.svg`` and ``<name>.pdf`` (the PDF for a
paper's LaTeX).
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from scalelab.analysis.result import FitResult

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5,
    "xtick.labelsize": 8, "ytick.labelsize": 8,
}
APPROACH_COLORS = {"kaplan": "#7f7f7f", "1": "#1f77b4", "2": "#d62728", "3": "#2ca02c"}
APPROACH_LABELS = {"kaplan": "Kaplan", "1": "Approach 1", "2": "Approach 2", "3": "Approach 3"}
SIDE_COLORS = ("#1f77b4", "#d62728")

LABEL_C = "Training compute C (FLOPs)"
LABEL_N = "Non-embedding parameters N"
LABEL_D = "Training tokens D"
LABEL_LOSS = "Final eval loss (nats/token)"


def styled(function):
    """Build the figure under the report's rc style (fonts are read when artists are made)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)
    return wrapper


def new_figure(width=6.4, height=4.4, ncols=1, top=0.92, colorbars=False) -> tuple[Figure, list]:
    """A figure with fixed margins (a layout engine would measure every label twice: slow).

    ``colorbars``: leave room on the right of each panel for a colorbar and its label.
    """
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    if ncols == 1:
        fig.subplots_adjust(left=0.11, right=0.9 if colorbars else 0.98, bottom=0.12, top=top)
    else:
        fig.subplots_adjust(left=0.075, right=0.93 if colorbars else 0.985, bottom=0.13, top=top,
                            wspace=0.45 if colorbars else 0.32)
    for ax in axes:
        ax.grid(True, which="major", alpha=0.3, linewidth=0.6)
    return fig, axes


def _colorbar(fig: Figure, mappable, ax, label: str):
    """A colorbar beside ``ax``, with 10^k tick labels for log norms (no mathtext)."""
    bar = fig.colorbar(mappable, ax=ax, label=label, fraction=0.06, pad=0.02)
    norm = mappable.norm
    if isinstance(norm, LogNorm) and norm.vmax >= 10 * norm.vmin:   # narrower ranges keep mpl's labels
        bar.ax.yaxis.set_major_formatter(FuncFormatter(_power_of_ten))
        bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return bar


def log_axis(axis, loss: bool = False) -> None:
    """Log scale with few minor ticks (drawing dozens per decade is slow and cluttered).

    A loss axis gets plain-number labels at 1, 1.5, 2, 3, 4, 5, 6, 8 times powers of ten.
    """
    if axis.axis_name == "x":
        axis.axes.set_xscale("log")
    else:
        axis.axes.set_yscale("log")
    if loss:
        axis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)))
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_locator(NullLocator())
    else:
        axis.set_major_formatter(FuncFormatter(_power_of_ten))
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(NullFormatter())


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_of_ten(value, _pos=None) -> str:
    """'10' with a Unicode superscript exponent (no mathtext parsing: much faster)."""
    if value <= 0:
        return ""
    exponent = np.log10(value)
    if abs(exponent - round(exponent)) > 1e-6:
        return f"{value:g}"
    return "10" + str(int(round(exponent))).translate(_SUPERSCRIPT)


def save(fig: Figure, out_dir, name: str) -> list[Path]:
    """Write ``name``.png (200 dpi), ``name``.svg and ``name``.pdf into ``out_dir``; the PNG first."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.svg", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=200)
    for path in paths[1:]:
        fig.savefig(path)
    return paths


def _size_norm(values) -> LogNorm:
    values = np.asarray(values, dtype=float)
    low, high = float(values.min()), float(values.max())
    return LogNorm(vmin=low, vmax=high if high > low else low * 1.01)


def _flops_grid(values, pad: float = 0.15, n: int = 200) -> np.ndarray:
    logs = np.log10(np.asarray(values, dtype=float))
    span = max(logs.max() - logs.min(), 0.5)
    return np.logspace(logs.min() - pad * span, logs.max() + pad * span, n)


def add_legend(ax, **kwargs):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, **kwargs)


def _fmt_ci(value, ci) -> str:
    if ci and all(np.isfinite(ci)):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def _undetermined(result: FitResult) -> str:
    return " (not determined)" if result.status and result.status != "determined" else ""


@styled
def loss_vs_compute(table: pd.DataFrame, fits: dict, frontier_runs: pd.DataFrame | None = None) -> Figure:
    """All runs (coloured by N), the loss-vs-FLOPs frontier, and each fit's L(C) law."""
    fig, (ax,) = new_figure(colorbars=True)
    norm = _size_norm(table["params"])
    points = ax.scatter(table["flops"], table["loss"], c=table["params"], norm=norm, cmap="viridis",
                        s=22, edgecolors="none", alpha=0.9, label="runs", zorder=3)
    if frontier_runs is not None and len(frontier_runs):
        ax.scatter(frontier_runs["flops"], frontier_runs["loss"], facecolors="none", edgecolors="black",
                   s=60, linewidths=1.0, label="frontier (lowest loss so far)", zorder=4)
    grid = _flops_grid(table["flops"])
    for approach, result in fits.items():
        if result is None or not result.converged or not result.frontier:
            continue
        f = result.frontier
        label = (f"{APPROACH_LABELS[approach]}{_undetermined(result)}: L(C) = {f['E']:.3g} + {f['A']:.3g}"
                 f"$\\cdot$C$^{{-{f['gamma']:.3f}}}$")
        ax.plot(grid, result.loss_opt(grid), color=APPROACH_COLORS[approach], linewidth=1.4, label=label)
    log_axis(ax.xaxis)
    log_axis(ax.yaxis, loss=True)
    ax.set_xlabel(LABEL_C)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title("Loss vs compute with the compute-optimal frontier")
    _colorbar(fig, points, ax, LABEL_N)
    add_legend(ax, loc="upper right")
    return fig


@styled
def isoflop_profiles(table: pd.DataFrame, fit2: FitResult) -> Figure:
    """Loss vs N per budget, with the fitted parabolas and their minima."""
    fig, (ax,) = new_figure(colorbars=True)
    budgets = [m["budget"] for m in fit2.details["minima"]] + [d["budget"] for d in fit2.details["dropped_budgets"]]
    norm = _size_norm(budgets)
    cmap = colormaps["plasma"]
    from scalelab.analysis.runs.budgets import assign_budgets
    labels, _ = assign_budgets(table, fit2.details.get("budget_tolerance", 0.05))
    for value in sorted(set(budgets)):
        runs = table[np.isclose(labels.to_numpy(dtype=float), value, rtol=1e-9)].sort_values("params")
        color = cmap(norm(value) * 0.85)
        ax.plot(runs["params"], runs["loss"], "o", color=color, markersize=4, alpha=0.85)
    for m in fit2.details["minima"]:
        color = cmap(norm(m["budget"]) * 0.85)
        c2, c1, c0 = m["parabola_logN"]
        x = np.linspace(np.log(m["N_fit_low"]), np.log(m["N_fit_high"]), 80)
        ax.plot(np.exp(x), c0 + c1 * x + c2 * x ** 2, "-", color=color, linewidth=1.3)
        ax.plot(m["N_opt"], m["loss_opt"], "*", color="black", markersize=9, zorder=5)
    for d in fit2.details["dropped_budgets"]:
        runs = table[np.isclose(labels.to_numpy(dtype=float), d["budget"], rtol=1e-9)]
        ax.plot(runs["params"], runs["loss"], "x", color="grey", markersize=5)
    ax.plot([], [], "*", color="black", label="parabola minimum (N_opt)")
    if fit2.details["dropped_budgets"]:
        ax.plot([], [], "x", color="grey", label="dropped budget (minimum not bracketed)")
    log_axis(ax.xaxis)
    ax.set_xlabel(LABEL_N)
    ax.set_ylabel(LABEL_LOSS)
    ax.set_title("IsoFLOP profiles (parabola in log N near each minimum)")
    mappable = ax.scatter([], [], c=[], norm=norm, cmap=cmap)
    _colorbar(fig, mappable, ax, "Compute budget C (FLOPs)")
    add_legend(ax, loc="best")
    return fig


def _power_band(result: FitResult, grid, which: str):
    """Percentile band of G*C^a (or H*C^b) over the bootstrap samples."""
    coef, expo = ("G", "a") if which == "N" else ("H", "b")
    draws = [s[coef] * grid ** s[expo] for s in result.samples if np.isfinite([s[coef], s[expo]]).all()]
    if len(draws) < 5:
        return None
    return np.percentile(np.array(draws), [2.5, 97.5], axis=0)


@styled
def optimal_allocation(fits: dict, flops_range) -> Figure:
    """N_opt(C) and D_opt(C) per approach: the points each fit used, its power law and CI band."""
    fig, axes = new_figure(width=10, height=4.2, ncols=2)
    grid = _flops_grid(flops_range, pad=0.05)
    for approach, result in fits.items():
        if result is None or not result.converged:
            continue
        color = APPROACH_COLORS[approach]
        pts = _allocation_points(result)
        for ax, which, coef, expo in ((axes[0], "N", result.G, result.a), (axes[1], "D", result.H, result.b)):
            if pts is not None:
                ax.plot(pts["flops"], pts[f"{which}_opt"], "o", color=color, markersize=3.5, alpha=0.7)
            ci = result.ci.get("a" if which == "N" else "b")
            label = f"{APPROACH_LABELS[approach]}{_undetermined(result)}: exponent {_fmt_ci(expo, ci)}"
            ax.plot(grid, coef * grid ** expo, "-", color=color, linewidth=1.4, label=label)
            band = _power_band(result, grid, which)
            if band is not None:
                ax.fill_between(grid, band[0], band[1], color=color, alpha=0.18, linewidth=0)
    for ax, label, title in ((axes[0], "Compute-optimal parameters N_opt", "N_opt(C)"),
                             (axes[1], "Compute-optimal tokens D_opt", "D_opt(C)")):
        log_axis(ax.xaxis)
        log_axis(ax.yaxis)
        ax.set_xlabel(LABEL_C)
        ax.set_ylabel(label)
        ax.set_title(f"{title}; shaded: bootstrap 95% band")
        add_legend(ax, loc="upper left")
    return fig


def _allocation_points(result: FitResult) -> pd.DataFrame | None:
    if result.approach == "2":
        m = pd.DataFrame(result.details["minima"])
        return pd.DataFrame({"flops": m["budget"], "N_opt": m["N_opt"], "D_opt": m["D_opt"]})
    if result.approach == "1":
        e = pd.DataFrame(result.details["envelope"])
        e = e[~e["edge"]]
        return pd.DataFrame({"flops": e["flops"], "N_opt": e["N_opt"], "D_opt": e["D_opt"]})
    if result.approach == "kaplan":
        r = pd.DataFrame(result.details["frontier_runs"])
        return pd.DataFrame({"flops": r["flops"], "N_opt": r["params"], "D_opt": r["tokens"]})
    return None


@styled
def approach3_residuals(table: pd.DataFrame, fit3: FitResult) -> Figure:
    """Relative residuals of L(N, D) vs N (coloured by D) and vs D (coloured by N)."""
    fig, axes = new_figure(width=10, height=4.0, ncols=2, top=0.86, colorbars=True)
    predicted = fit3.predict_loss(table["params"], table["tokens"], table["flops"])
    residual = 100 * (table["loss"].to_numpy() - predicted) / predicted
    for ax, x, c, xlabel, clabel, cmap in (
            (axes[0], table["params"], table["tokens"], LABEL_N, LABEL_D, "cividis"),
            (axes[1], table["tokens"], table["params"], LABEL_D, LABEL_N, "viridis")):
        points = ax.scatter(x, residual, c=c, norm=_size_norm(c), cmap=cmap, s=20, edgecolors="none")
        ax.axhline(0.0, color="black", linewidth=0.8)
        log_axis(ax.xaxis)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Residual (actual - fit) / fit (%)")
        _colorbar(fig, points, ax, clabel)
    p = fit3.params
    law = (fit3.details or {}).get("law")
    if law and law.get("name") != "chinchilla":
        text = f"{law['name']} law, " + ", ".join(f"{k} = {v:.3g}" for k, v in p.items())
    else:
        text = f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3f} + {p['B']:.3g}/D^{p['beta']:.3f}"
    fig.suptitle(f"Approach 3 residuals: {text}  (RMS {np.sqrt(np.mean(residual ** 2)):.2f}%)", fontsize=10)
    return fig


@styled
def training_curves(table: pd.DataFrame, curves: pd.DataFrame, fit1: FitResult | None = None,
                    loss_column: str = "train_loss") -> Figure:
    """Loss vs FLOPs along training, one line per run coloured by N; approach 1's envelope on top."""
    fig, (ax,) = new_figure(colorbars=True)
    norm = _size_norm(table["params"])
    cmap = colormaps["viridis"]
    sizes = table.drop_duplicates("run_dir").set_index("run_dir")["params"]
    for run_dir, curve in curves.groupby("run_dir", sort=False):
        if run_dir not in sizes.index:
            continue
        curve = curve.sort_values("flops")
        ax.plot(curve["flops"], curve[loss_column], color=cmap(norm(sizes[run_dir])), linewidth=0.9, alpha=0.85)
    if fit1 is not None and fit1.converged:
        env = pd.DataFrame(fit1.details["envelope"])
        ax.plot(env["flops"], env["loss"], "--", color="black", linewidth=1.3, label="lower envelope (approach 1)")
        inner = env[~env["edge"]]
        ax.plot(inner["flops"], inner["loss"], "o", color="black", markersize=2.5, label="envelope points used")
    log_axis(ax.xaxis)
    log_axis(ax.yaxis, loss=True)
    ax.set_xlabel(LABEL_C + " so far")
    ax.set_ylabel(f"Training loss ({loss_column}, nats/token)")
    ax.set_title("Training curves coloured by model size")
    mappable = ax.scatter([], [], c=[], norm=norm, cmap=cmap)
    _colorbar(fig, mappable, ax, LABEL_N)
    add_legend(ax, loc="upper right")
    return fig


@styled
def comparison(result, tables) -> Figure:
    """Two sweeps: their runs and frontiers, and their N_opt(C) laws."""
    fig, axes = new_figure(width=10, height=4.2, ncols=2)
    all_flops = pd.concat([t["flops"] for t in tables])
    grid = _flops_grid(all_flops)
    for name, fitted, table, color in zip(result.names, (result.fit_a, result.fit_b), tables, SIDE_COLORS,
                                          strict=True):
        axes[0].scatter(table["flops"], table["loss"], color=color, s=12, alpha=0.5, edgecolors="none")
        if fitted.converged and fitted.frontier:
            axes[0].plot(grid, fitted.loss_opt(grid), color=color, linewidth=1.5, label=f"{name}: frontier L(C)")
        if fitted.converged:
            axes[1].plot(grid, fitted.n_opt(grid), color=color, linewidth=1.5,
                         label=f"{name}: N_opt ~ C^{fitted.a:.3f}")
            axes[1].plot(grid, fitted.d_opt(grid), "--", color=color, linewidth=1.5,
                         label=f"{name}: D_opt ~ C^{fitted.b:.3f}")
            band = _power_band(fitted, grid, "N")
            if band is not None:
                axes[1].fill_between(grid, band[0], band[1], color=color, alpha=0.15, linewidth=0)
    for row in result.multipliers:
        if np.isfinite(row["multiplier"]):
            axes[0].annotate(f"x{row['multiplier']:.2g}", (row["budget"], row[f"loss_{result.names[1]}"]),
                             textcoords="offset points", xytext=(0, -12), fontsize=7, ha="center")
    log_axis(axes[0].xaxis)
    log_axis(axes[0].yaxis, loss=True)
    axes[0].set_xlabel(LABEL_C)
    axes[0].set_ylabel(LABEL_LOSS)
    axes[0].set_title(f"Runs and frontiers (labels: compute multiplier of {result.names[1]})")
    log_axis(axes[1].xaxis)
    log_axis(axes[1].yaxis)
    axes[1].set_xlabel(LABEL_C)
    axes[1].set_ylabel("Compute-optimal N (solid), D (dashed)")
    axes[1].set_title(f"Compute-optimal allocation (approach {result.approach})")
    for ax in axes:
        add_legend(ax, loc="best")
    return fig
