"""Loading, validating and collecting runs tables; bad input gives clear AnalysisErrors."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis import AnalysisError, AnalysisWarning, collect, fit, load_table, write_table
from scalelab.analysis import synthetic as sy


def good_table(n=8):
    law = sy.ChinchillaLaw()
    return sy.grid_runs(law, np.logspace(7, 9, n // 2 if n > 2 else 1), [1e9, 1e10], noise=0.0)


# ---------------------------------------------------------------- bad input

def test_empty_table():
    empty = pd.DataFrame(columns=["params", "tokens", "flops", "loss"])
    with pytest.raises(AnalysisError, match="empty: it has no runs"):
        load_table(empty)


def test_missing_columns_are_named():
    table = good_table().drop(columns=["flops", "loss"])
    with pytest.raises(AnalysisError, match=r"missing required column\(s\): flops, loss"):
        fit(table, "3")


@pytest.mark.parametrize("column, value, shown", [("loss", -1.0, "-1.0"), ("params", 0.0, "0.0"),
                                                   ("tokens", math.nan, "nan"), ("flops", "abc", "'abc'")])
def test_bad_values_name_column_and_row(column, value, shown):
    table = good_table().astype({column: object})
    table.loc[3, column] = value
    with pytest.raises(AnalysisError) as info:
        load_table(table)
    message = str(info.value)
    assert f"column '{column}'" in message and "row 3" in message and shown in message


def test_bad_value_row_names_the_model():
    table = good_table()
    table["model"] = [f"m{i}" for i in range(len(table))]
    table.loc[5, "loss"] = np.nan
    with pytest.raises(AnalysisError, match=r"row 5 \(model m5\)"):
        load_table(table)


def test_too_few_runs_says_how_many_needed():
    table = good_table().iloc[:4]
    with pytest.raises(AnalysisError, match=r"approach 3 .* needs at least 6 runs.*got 4 runs"):
        fit(table, "3")
    with pytest.raises(AnalysisError, match=r"Kaplan fits need at least 4 runs, got 3"):
        fit(table.iloc[:3], "kaplan")


def test_budgets_with_too_few_sizes_for_a_parabola():
    table = sy.parabola_isoflop_runs([1e18, 1e19, 1e20], G=0.08, a=0.5, sizes_per_budget=2)
    with pytest.raises(AnalysisError) as info:
        fit(table, "2")
    message = str(info.value)
    assert "approach 2 needs at least 2 budgets" in message
    assert "budget 1e+18: has 2 model size(s); a parabola needs at least 3" in message


def test_unknown_approach_and_format():
    with pytest.raises(AnalysisError, match="unknown approach 'chinchilla'"):
        fit(good_table(), "chinchilla")
    with pytest.raises(AnalysisError, match="use a .csv or .parquet"):
        load_table("runs.xlsx")


def test_holdout_too_large():
    with pytest.raises(AnalysisError, match="--holdout-top must be between 1 and 7"):
        fit(good_table(), "3", holdout_top=8)


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_and_load_with_curves(tmp_path, suffix):
    runs, curves = sy.curve_runs(sy.ChinchillaLaw(), [1e6, 1e7, 1e8], points=5)
    runs.attrs["curves"] = curves
    path = tmp_path / f"runs{suffix}"
    written = write_table(runs, path)
    assert written == [path, tmp_path / f"runs.curves{suffix}"]
    loaded = load_table(path)
    assert len(loaded) == 3 and loaded.attrs["curves"].shape == curves.shape
    assert loaded.attrs["source"] == str(path)


def test_load_table_drops_non_completed_rows_with_counts():
    table = good_table()
    table["status"] = ["completed"] * 5 + ["failed", "diverged", "failed"]
    with pytest.warns(AnalysisWarning, match=r"excluded 3 of 8 runs that did not complete \(2 failed, 1 diverged\)"):
        loaded = load_table(table)
    assert len(loaded) == 5
    assert loaded.attrs["run_counts"] == {"completed": 5, "failed": 2, "diverged": 1}


# ---------------------------------------------------------------- collect

def _summary(status, params, tokens, loss, budget=None, model="p1m"):
    flops = 6.0 * params * tokens
    return {"status": status, "model": model, "params": params, "params_total": params * 1.2, "tokens": tokens,
            "flops": flops, "flops_per_token": flops / tokens, "final_eval_loss": loss,
            "final_eval_bpb": None if loss is None else loss / math.log(2), "budget": budget,
            "steps": 10, "wall_seconds": 3.0}


def _metrics(params, tokens, n=6):
    rows = []
    for i in range(1, n + 1):
        t = tokens * i / n
        row = {"step": i, "tokens": t, "flops": 6 * params * t, "train_loss": 5.0 - i * 0.3, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_second": 1e4, "mfu": 0.2}
        if i % 3 == 0:
            row["eval_loss"] = 5.1 - i * 0.3
        rows.append(row)
    return rows


@pytest.fixture()
def fake_sweep(tmp_path):
    """A sweep dir with runs at different depths, including failed, diverged and running runs."""
    root = tmp_path / "my_sweep"
    specs = [
        ("C1e15/p1m", "completed", 1e6, 1.6e8, 3.1, 1e15),
        ("C1e15/p2m", "completed", 2e6, 8.3e7, 3.0, 1e15),
        ("C1e15/deeper/p4m", "completed", 4e6, 4.1e7, 3.2, 1e15),
        ("C1e15/p8m", "failed", 8e6, 2e7, None, 1e15),
        ("C1e16/p4m", "diverged", 4e6, 4.1e8, None, 1e16),
        ("C1e16/p8m", "running", 8e6, 2e8, None, 1e16),
        ("C1e16/p16m", "completed", 1.6e7, 1e8, 2.7, None),
    ]
    for rel, status, n, d, loss, budget in specs:
        sy.write_run_dir(root / rel, _summary(status, n, d, loss, budget, model=rel.split("/")[-1]),
                         _metrics(n, d) if status == "completed" else None)
    # a truncated last line, as when a run is killed mid-write
    with (root / "C1e15/p1m/metrics.jsonl").open("a") as handle:
        handle.write('{"step": 7, "tok')
    (root / "C1e15/p1m/.hydra").mkdir()
    return root


def test_collect_rows_and_warning_counts(fake_sweep):
    with pytest.warns(AnalysisWarning) as record:
        table = collect([fake_sweep])
    messages = [str(w.message) for w in record]
    assert any("excluded 3 of 7 runs (1 failed, 1 diverged, 1 running)" in m for m in messages)
    assert any("skipped 1 unreadable line" in m for m in messages)
    assert len(table) == 4
    assert set(table["model"]) == {"p1m", "p2m", "p4m", "p16m"}
    assert (table["sweep"] == "my_sweep").all()
    assert (table["status"] == "completed").all()
    row = table.set_index("model").loc["p2m"]
    assert row["params"] == 2e6 and row["tokens"] == 8.3e7 and row["loss"] == 3.0
    assert row["flops"] == pytest.approx(6 * 2e6 * 8.3e7) and row["budget"] == 1e15
    assert math.isnan(table.set_index("model").loc["p16m", "budget"])
    assert table.attrs["run_counts"] == {"completed": 4, "failed": 1, "diverged": 1, "running": 1}
    curves = table.attrs["curves"]
    assert list(curves.columns) == ["run_dir", "step", "tokens", "flops", "train_loss", "eval_loss"]
    assert len(curves) == 4 * 6
    assert curves["eval_loss"].notna().sum() == 4 * 2


def test_collect_keep_excluded_and_write(fake_sweep, tmp_path):
    with pytest.warns(AnalysisWarning):
        table = collect(fake_sweep, keep_excluded=True)
    assert len(table) == 7
    assert sorted(table["status"]) == ["completed"] * 4 + ["diverged", "failed", "running"]
    out = tmp_path / "out" / "runs.csv"
    write_table(table, out)
    assert (tmp_path / "out" / "runs.curves.csv").is_file()
    with pytest.warns(AnalysisWarning, match="excluded 3 of 7"):
        loaded = load_table(out)
    assert len(loaded) == 4 and len(loaded.attrs["curves"]) == 24


def test_collect_errors(tmp_path):
    with pytest.raises(AnalysisError, match="sweep directory not found"):
        collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnalysisError, match="no runs found under"):
        collect([tmp_path / "empty"])
    sy.write_run_dir(tmp_path / "bad" / "r1", {"status": "failed", "params": 1})
    with pytest.raises(AnalysisError, match="none of the 1 runs completed"), pytest.warns(AnalysisWarning):
        collect([tmp_path / "bad"])


def test_collect_unreadable_summary_is_counted(tmp_path):
    sy.write_run_dir(tmp_path / "s" / "ok", _summary("completed", 1e6, 1e8, 3.0))
    broken = tmp_path / "s" / "broken"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text("{not json")
    with pytest.warns(AnalysisWarning, match=r"1 unreadable"):
        table = collect([tmp_path / "s"])
    assert len(table) == 1


def test_collect_completed_without_loss_is_excluded(tmp_path):
    sy.write_run_dir(tmp_path / "s" / "a", _summary("completed", 1e6, 1e8, 3.0))
    sy.write_run_dir(tmp_path / "s" / "b", _summary("completed", 2e6, 1e8, None))
    with pytest.warns(AnalysisWarning, match="1 completed-without-loss"):
        table = collect([tmp_path / "s"])
    assert list(table["loss"]) == [3.0]
    data = json.loads((tmp_path / "s" / "a" / "summary.json").read_text())
    assert data["final_eval_loss"] == 3.0
