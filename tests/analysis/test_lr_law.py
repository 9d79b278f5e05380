"""`analyze lr-law`: per-cell lr sweeps, their optima, and the fitted law lr* = c N^p D^q [B^r]."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis.errors import AnalysisError
from scalelab.analysis.hyper.lr_law import fit_lr_law, mark_cells, optimum_of
from scalelab.cli.analyze import main as analyze_main
from scalelab.lr_law_file import read_law

TRUE = {"c": 0.8, "p": -0.35, "q": 0.1, "r": 0.2}
AROUND = 2.0 ** np.arange(-3, 4)  # lr factors around the true optimum


def sweeps(seed=0, factors=AROUND, batches=(None,)) -> pd.DataFrame:
    """Runs of lr sweeps in 12 (N, D) cells (x batches): loss quadratic in log(lr / lr*) plus noise."""
    rng, rows = np.random.default_rng(seed), []
    for n in (1e4, 3e4, 1e5, 3e5):
        for d in (1e6, 4e6, 1.6e7):
            for b in batches:
                true = TRUE["c"] * n ** TRUE["p"] * d ** TRUE["q"] * (b ** TRUE["r"] if b else 1.0)
                for f in factors:
                    lr = true * f * np.exp(rng.normal(0, 0.05))
                    loss = 2 + 0.05 * np.log(lr / true) ** 2 + rng.normal(0, 0.002)
                    row = {"params": n, "tokens": d, "flops": 6 * n * d, "loss": loss, "lr": lr}
                    if b:
                        row.update(batch_size=b // 64, seq_len=64)
                    rows.append(row)
    return pd.DataFrame(rows)


def test_recovers_a_known_law_from_noisy_sweeps():
    fit = fit_lr_law(sweeps(), bootstrap=100)
    law = fit.law
    assert law.p == pytest.approx(TRUE["p"], abs=0.05) and law.q == pytest.approx(TRUE["q"], abs=0.05)
    assert law.c == pytest.approx(TRUE["c"], rel=0.3) and law.r is None
    low, high = law.extra["ci"]["p"]
    assert low < law.p < high and high - low < 0.1
    assert len(fit.used) == 12 and list(law.validity["N"]) == [1e4, 3e5]
    assert law.extra["bootstrap"]["succeeded"] == 100


def test_a_batch_law_recovers_r():
    fit = fit_lr_law(sweeps(batches=(4096, 32768)), over="N,D,B", bootstrap=20)
    assert fit.law.r == pytest.approx(TRUE["r"], abs=0.05) and fit.law.p == pytest.approx(TRUE["p"], abs=0.05)
    assert len(fit.cells) == 24  # the batch splits cells


def test_refuses_naming_the_cells_whose_optimum_sits_on_the_grid_edge():
    table = sweeps(factors=2.0 ** np.arange(0, 5))  # every grid starts at the optimum
    with pytest.raises(AnalysisError, match=r"12 of 12 cell\(s\).*N=1e\+04 D=1e\+06: best run at the smallest lr"):
        fit_lr_law(table, bootstrap=0)
    part = pd.concat([sweeps(), table[table["params"] == 3e5]], ignore_index=True)
    part.loc[len(sweeps()):, "params"] = 1e6  # three more cells, at a size of their own, unbracketed
    with pytest.raises(AnalysisError, match="3 of 15 cell"):
        fit_lr_law(part, bootstrap=0)
    with pytest.warns(UserWarning, match="left out 3 unbracketed"):
        fit = fit_lr_law(part, bootstrap=0, allow_edge=True)
    assert len(fit.used) == 12 and fit.law.validity["N"][1] == 3e5


def test_an_interior_best_is_bracketed_and_too_few_lrs_are_not():
    lr_opt, ok, _, _, window = optimum_of([1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2], [2.0, 1.0, 1.01, 1.1, 1.3, 1.6])
    assert ok and 1e-3 < lr_opt < 4e-3 and window == (0, 4)
    _, ok, note, _, _ = optimum_of([1e-3, 2e-3, 4e-3], [1.0, 0.5, 0.99])
    assert ok and note == ""
    _, ok, note, _, _ = optimum_of([1e-3, 2e-3], [1.0, 0.5])
    assert not ok and "at least 3" in note


def test_mark_cells_keeps_every_run_and_marks_the_best_per_cell():
    table = sweeps()
    marked, cells = mark_cells(table)
    assert len(marked) == len(table) and marked["is_best"].sum() == 12 and marked["cell"].nunique() == 12
    best = marked[marked["is_best"]]
    assert (best.groupby("cell")["loss"].min() == marked.groupby("cell")["loss"].min()).all()
    assert marked["lr_bracketed"].all() and np.isfinite(marked["lr_opt"]).all()


def test_cli_writes_the_law_figures_and_refuses_edges(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    sweeps().to_csv(path, index=False)
    out = tmp_path / "law"
    assert analyze_main(["lr-law", str(path), "-o", str(out), "--bootstrap", "10", "--json", str(tmp_path / "l.json")]) == 0
    law = read_law(out / "lr_law.json")
    assert law.p == pytest.approx(TRUE["p"], abs=0.05)
    assert json.loads((tmp_path / "l.json").read_text())["p"] == law.p
    for name in ("lr_sweeps", "lr_law"):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").exists()
    sweeps(factors=2.0 ** np.arange(0, 5)).to_csv(path, index=False)
    assert analyze_main(["lr-law", str(path), "-o", str(out), "--no-figures"]) == 2
    assert "best run at the smallest lr" in capsys.readouterr().err


def test_collect_best_over_lr_on_built_runs(tmp_path):
    """Run dirs as the trainer writes them (summaries of built runs, two sizes x four lrs, one size's
    best at the grid's edge), with a loss made up from the lr: collect marks cells and best runs."""
    from scalelab.train.build import build_run
    from scalelab.train.session import base_summary
    from tests.helpers import TINY, compose_config

    sweep = tmp_path / "sweep"
    for d_ff, best in ((64, 3e-3), (128, 1e-3)):
        for lr in (1e-3, 3e-3, 1e-2, 3e-2):
            name = f"model.d_ff={d_ff},optimizer.lr={lr}"
            run = build_run(compose_config([*TINY, f"model.d_ff={d_ff}", f"optimizer.lr={lr}"]), sweep / name)
            summary = {**base_summary(run), "status": "completed", "final_eval_bpb": 1.0,
                       "final_eval_loss": 2.0 + 0.1 * np.log(lr / best) ** 2}
            run.run_dir.mkdir(parents=True)
            (run.run_dir / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "runs.csv"
    assert analyze_main(["collect", str(sweep), "-o", str(out), "--best-over", "optimizer.lr"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 8 and table["cell"].nunique() == 2 and table["is_best"].sum() == 2
    best = table[table["is_best"]].set_index("params")["lr"]
    assert sorted(best) == [1e-3, 3e-3]
    bracketed = table[table["is_best"]].set_index("lr")["lr_bracketed"]
    assert bracketed[3e-3] and not bracketed[1e-3]
    opt = table.loc[table["is_best"] & (table["lr"] == 3e-3), "lr_opt"].iloc[0]
    assert opt == pytest.approx(3e-3, rel=0.05)
    from scalelab.analysis.hyper.lr_law import best_per_cell
    from scalelab.analysis.runs.table import load_table
    with pytest.warns(UserWarning, match="1 of 2 cell"):
        assert len(best_per_cell(load_table(out))) == 2
