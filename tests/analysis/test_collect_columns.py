"""A collected runs table has the columns a study filters on; report writes it as runs.csv."""

from __future__ import annotations

import itertools
import warnings

import pandas as pd
import pytest

from scalelab.analysis import collect, report
from scalelab.analysis.synthetic import ChinchillaLaw, ladder_isoflop_runs, write_run_dir, write_sweep
from scalelab.cli import analyze as cli

LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1)


def _config(lr: float, seed: int, weight_decay: float = 0.1) -> dict:
    """The parts of a resolved training config that collect reads (as in summary.json)."""
    return {"model": {"name": "p15k", "d_model": 32, "lr": 0.01},
            "data": {"source": "stdlib", "tokens": 20000, "seq_len": 64},
            "train": {"batch_size": 8, "seed": seed},
            "optimizer": {"name": "adamw", "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.95]},
            "schedule": {"name": "cosine", "warmup": 0.05}, "budget": None}


def _lr_seed_sweep(root, weight_decays=None):
    """A packed learning-rate x seed sweep of p15k, written as the trainer lays it out."""
    names = [f"optimizer.lr={lr},train.seed={seed}" for lr, seed in itertools.product(LRS, SEEDS)]
    for i, (lr, seed) in enumerate(itertools.product(LRS, SEEDS)):
        wd = weight_decays[i] if weight_decays else 0.1
        write_run_dir(root / names[i], {
            "status": "completed", "model": "p15k", "params": 13408, "params_total": 21600, "tokens": 20000,
            "flops": 6 * 13408 * 20000, "flops_per_token": 6 * 13408, "budget": None,
            "final_eval_loss": 3.0 + lr * 10 + seed * 0.01, "final_eval_bpb": 4.0,
            "mfu": 0.2, "wall_seconds": 12.5, "packed_with": names, "config": _config(lr, seed, wd)})
    return root


def test_an_lr_seed_sweep_collects_with_lr_and_seed_columns(tmp_path):
    table = collect(_lr_seed_sweep(tmp_path / "lr"))
    assert len(table) == 6
    for column in ("lr", "seed", "batch_size", "seq_len", "schedule", "warmup", "mfu", "wall_seconds",
                   "packed_with"):
        assert column in table.columns, column
    assert sorted(zip(table["lr"], table["seed"])) == sorted(itertools.product(LRS, SEEDS))
    for run in table.itertuples():
        assert f"optimizer.lr={run.lr},train.seed={run.seed}" in run.run_dir
    assert set(table["packed_with"]) == {6} and set(table["schedule"]) == {"cosine"}
    # lr and seed are not repeated under their dotted keys; nothing else varies, so nothing else is added
    assert not [c for c in table.columns if "." in c], list(table.columns)
    best = table[table["seed"] == 0].sort_values("loss").iloc[0]
    assert best["lr"] == 1e-3


def test_a_varying_hyperparameter_gets_its_dotted_column(tmp_path):
    table = collect(_lr_seed_sweep(tmp_path / "wd", weight_decays=[0.0, 0.1, 0.0, 0.1, 0.0, 0.1]))
    assert "optimizer.weight_decay" in table.columns
    assert "optimizer.betas" not in table.columns and "model.d_model" not in table.columns
    assert list(table.columns).index("lr") < list(table.columns).index("optimizer.weight_decay")


def test_the_cli_writes_a_table_to_filter(tmp_path, capsys):
    out = tmp_path / "runs.csv"
    assert cli.main(["collect", str(_lr_seed_sweep(tmp_path / "lr")), "-o", str(out)]) == 0
    runs = pd.read_csv(out)
    picked = runs[(runs["lr"] == 3e-3) & (runs["seed"] == 1)]
    assert len(picked) == 1 and picked["loss"].iloc[0] == pytest.approx(3.04)


def test_report_writes_runs_csv_and_pdf_figures(tmp_path):
    law = ChinchillaLaw(overhead=630.0)
    sweep = write_sweep(tmp_path / "iso", ladder_isoflop_runs(law, [1e12, 3e12, 1e13], noise=0.005, seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = report([sweep], tmp_path / "report", approaches=("2",), bootstrap=0, holdout_top=0)
    runs = pd.read_csv(result.runs)
    assert result.runs == tmp_path / "report" / "runs.csv"
    assert len(runs) == len(collect(sweep)) and {"params", "tokens", "flops", "loss", "wall_seconds"} <= set(runs)
    pdfs = sorted(p.name for p in result.figures if p.suffix == ".pdf")
    assert "isoflop_profiles.pdf" in pdfs and all((tmp_path / "report" / p).stat().st_size > 1000 for p in pdfs)
