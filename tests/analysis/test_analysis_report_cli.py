"""report() and the CLI (collect, fit, compare, report) on synthetic sweep directories."""

import json

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis import report
from scalelab.analysis import synthetic as sy
from scalelab.analysis.result import FitResult
from scalelab.cli import analyze as cli

LAW_A = sy.ChinchillaLaw()
LAW_B = sy.ChinchillaLaw(A=LAW_A.A * 2 ** -LAW_A.alpha, B=LAW_A.B * 2 ** -LAW_A.beta)
SINGLE_STUDY_FIGURES = ("loss_vs_compute", "isoflop_profiles", "optimal_allocation", "approach3_residuals",
                        "training_curves")


def make_sweep(root, law, seed):
    """IsoFLOP runs (5 budgets x 7 sizes), 14 runs with training curves, and 2 runs that did not finish."""
    iso = sy.isoflop_runs(law, np.logspace(17, 20, 5), sizes_per_budget=7, span_decades=0.6, noise=0.002,
                          seed=seed)
    runs, curves = sy.curve_runs(law, np.logspace(6, 9, 14), tokens_per_param=150, points=30, noise=0.001,
                                 seed=seed)
    table = pd.concat([iso, runs], ignore_index=True)
    sy.write_sweep(root, table, curves)
    sy.write_run_dir(root / "broken" / "r1", {"status": "failed", "model": "p1m", "error": "boom"})
    sy.write_run_dir(root / "broken" / "r2", {"status": "diverged", "model": "p2m", "params": 2e6})
    return root


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    base = tmp_path_factory.mktemp("sweeps")
    return make_sweep(base / "baseline", LAW_A, 0), make_sweep(base / "better", LAW_B, 1)


@pytest.fixture(scope="module")
def two_study_report(sweeps, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    with pytest.warns(UserWarning):
        result = report(list(sweeps), out, bootstrap=5, n_starts=48, bootstrap_starts=0)
    return out, result


def test_report_writes_every_figure_and_markdown(two_study_report):
    out, result = two_study_report
    names = [f"{study}_{fig}" for study in ("baseline", "better") for fig in SINGLE_STUDY_FIGURES]
    names.append("comparison_better")
    for name in names:
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 5000, path
    assert not result.skipped, result.skipped
    text = (out / "report.md").read_text()
    for needle in ("## Conventions", "non-embedding", "### Runs", "| completed | 49 | included |",
                   "| failed | 1 | excluded |", "| diverged | 1 | excluded |", "Compute-optimal allocation",
                   "tokens/param", "Held-out prediction", "relative error", "[", "## Comparison",
                   "compute multiplier of better", "![loss_vs_compute](baseline_loss_vs_compute.png)",
                   "Chinchilla approach 3", "starts reached it"):
        assert needle in text, needle
    fits = json.loads((out / "fits.json").read_text())
    assert set(fits) == {"baseline", "better"} and set(fits["baseline"]) == {"kaplan", "1", "2", "3"}
    assert text.startswith("# Scaling-law report") and text.index("## Verdict") < text.index("## Conventions")


def test_fits_json_contract(two_study_report):
    """The fields other tools read, for every approach (design notes: fits.json)."""
    out, result = two_study_report
    fits = json.loads((out / "fits.json").read_text())
    for study in fits.values():
        for approach, f in study.items():
            for key in ("a", "b", "ci", "bootstrap", "status", "reason", "holdout", "converged"):
                assert key in f, (approach, key)
            assert f["status"] in ("determined", "not determined")
            assert f["status"] == "determined" or f["reason"]
            assert {"requested", "succeeded"} <= set(f["bootstrap"]) and f["bootstrap"]["requested"] == 5
            for key in ("a", "b"):
                low, high = f["ci"][key]
                assert low <= high
            assert f["holdout"] and all("rel_error" in row for row in f["holdout"]), approach
        for row in study["2"]["details"]["minima"]:
            assert {"budget", "n_sizes", "N_opt", "loss", "D_opt", "flops"} <= set(row)
    # the held-out run is the best run of the largest budget, for every approach
    table = result.studies[0].table
    largest = table[table["budget"] == table["budget"].max()]
    for f in fits["baseline"].values():
        assert f["holdout"][0]["loss"] == pytest.approx(largest["loss"].min())
    assert set(json.loads((out / "verdict.json").read_text())) == {"baseline", "better"}


def test_report_lists_figures_it_cannot_draw(tmp_path):
    """A table without curves or budgets: approach 1, 2 figures are skipped with the reason."""
    table = sy.grid_runs(LAW_A, np.logspace(7, 9, 4), np.logspace(9, 11, 4), noise=0.005)
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    result = report([path], tmp_path / "out", approaches=("1", "3"), bootstrap=0, n_starts=32, holdout_top=0)
    assert "training curves" in result.skipped["training_curves"]
    assert "approach 1 needs training curves" in result.skipped["isoflop_profiles"] or \
        "not requested" in result.skipped["isoflop_profiles"]
    assert (tmp_path / "out" / "approach3_residuals.png").is_file()
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Figures not drawn" in text and "`training_curves`: no training curves" in text
    assert "NOT DETERMINED**: approach 1 needs training curves" in text
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["runs"]["1"]["status"] == "not determined"
    assert "needs training curves" in fits["runs"]["1"]["reason"]


def test_cli_collect_fit_compare_report(sweeps, tmp_path, capsys):
    baseline, better = sweeps
    runs = tmp_path / "runs.csv"
    assert cli.main(["collect", str(baseline), "-o", str(runs)]) == 0
    captured = capsys.readouterr()
    assert "collected 49 completed runs" in captured.out
    assert "warning: collect: excluded 2 of 51 runs (1 diverged, 1 failed)" in captured.err or \
        "warning: collect: excluded 2 of 51 runs (1 failed, 1 diverged)" in captured.err
    assert (tmp_path / "runs.curves.csv").is_file()

    out_json = tmp_path / "fit.json"
    code = cli.main(["fit", str(runs), "--approach", "2", "--bootstrap", "10", "--json", str(out_json),
                     "--holdout-top", "3", "--budgets", "1e19,1e20"])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["approach"] == "2" and data["converged"] is True
    assert abs(data["a"] - LAW_A.a) < 0.05
    assert [row["budget"] for row in data["allocation"]] == [1e19, 1e20]
    assert len(data["holdout"]) == 3 and data["bootstrap"]["requested"] == 10
    assert "N_opt ~ C^" in capsys.readouterr().out

    out_json = tmp_path / "fit3.json"
    assert cli.main(["fit", str(runs), "--approach", "3", "--n-starts", "64", "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["details"]["n_starts"] == 64 and data["conventions"]["C(N, D)"].startswith("C(N, D) = f(N)*D")

    assert cli.main(["fit", str(runs), "--approach", "1", "--json", str(tmp_path / "fit1.json")]) == 0
    assert json.loads((tmp_path / "fit1.json").read_text())["approach"] == "1"

    cmp_json = tmp_path / "cmp.json"
    assert cli.main(["compare", str(baseline), str(better), "--approach", "2", "--budgets", "1e20",
                     "--json", str(cmp_json)]) == 0
    cmp = json.loads(cmp_json.read_text())
    assert cmp["names"] == ["baseline", "better"]
    assert 2.0 < cmp["multipliers"][0]["multiplier"] < 8.0
    assert "compute multiplier of better over baseline" in capsys.readouterr().out

    out_dir = tmp_path / "rep"
    assert cli.main(["report", str(runs), "-o", str(out_dir), "--approaches", "2", "--bootstrap", "0"]) == 0
    assert (out_dir / "report.md").is_file() and (out_dir / "isoflop_profiles.png").is_file()
    assert "skipped approach3_residuals" in capsys.readouterr().out


def test_cli_bad_input_exit_code_and_message(tmp_path, capsys):
    path = tmp_path / "runs.csv"
    pd.DataFrame({"params": [1e6, 2e6], "tokens": [1e8, 1e8], "loss": [3.0, 2.9]}).to_csv(path, index=False)
    assert cli.main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "missing required column(s): flops" in err
    assert cli.main(["fit", str(tmp_path / "nope.csv")]) == 2
    assert "no such table or sweep directory" in capsys.readouterr().err
    assert cli.main(["collect", str(tmp_path / "nope"), "-o", str(tmp_path / "x.csv")]) == 2
    assert "sweep directory not found" in capsys.readouterr().err


def test_cli_reports_non_convergence_without_numbers(tmp_path, capsys, monkeypatch):
    from scalelab.analysis.fitting import approaches as fit_module

    def failing_fit(table, **kwargs):
        return FitResult(approach="3", converged=False, message="approach 3: L-BFGS-B did not converge (test)")

    monkeypatch.setitem(fit_module.FITTERS, "3", failing_fit)
    path = tmp_path / "runs.csv"
    sy.grid_runs(LAW_A, np.logspace(7, 9, 3), np.logspace(9, 11, 3)).to_csv(path, index=False)
    out_json = tmp_path / "fit.json"
    assert cli.main(["fit", str(path), "--json", str(out_json)]) == 1
    captured = capsys.readouterr()
    assert "did not converge (test)" in captured.err
    assert "alpha" not in captured.out
    assert json.loads(out_json.read_text())["converged"] is False


def test_add_subparsers_registers_commands():
    import argparse
    parser = argparse.ArgumentParser(prog="scalelab")
    top = parser.add_subparsers(dest="cmd")
    analyze = top.add_parser("analyze")
    cli.add_subparsers(analyze.add_subparsers(dest="analyze_cmd", required=True))
    args = parser.parse_args(["analyze", "fit", "runs.csv", "--approach", "kaplan", "--bootstrap", "5",
                              "--holdout-top", "2", "--budgets", "1e18,1e19", "--json", "out.json"])
    assert args.func is cli.run_fit and args.approach == "kaplan" and args.bootstrap == 5
    assert args.holdout_top == 2 and args.budgets == "1e18,1e19" and args.json == "out.json"
    for argv in (["collect", "d1", "d2", "-o", "runs.parquet"], ["compare", "a.csv", "b"],
                 ["report", "d1", "-o", "out"]):
        assert callable(parser.parse_args(["analyze", *argv]).func)
