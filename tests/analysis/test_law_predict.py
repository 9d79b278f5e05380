"""Predictions with bootstrap intervals: coverage of held-out truths, held-out runs, the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis import AnalysisError, fit
from scalelab.analysis import synthetic as sy
from scalelab.analysis.fitting.forms import BUILTIN
from scalelab.analysis.fitting.predict import intervals_at
from scalelab.cli.analyze import main

ENVELOPE = {"Linf": 1.7, "A": 2000.0, "alpha": 0.17}
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def test_predict_intervals_cover_held_out_truths_at_their_nominal_rate():
    """80 noisy data sets (30 runs, 1% noise) of the envelope law over C = 1e17 ... 1e21; the 95%
    interval of the mean at C = 3e21 and 1e22 (beyond the data) must cover the true loss at close
    to 95%: at least 85% (a 75% interval would reach that in about 2% of such tests) and not every
    time. Measured: 0.93 and 0.95 over 100 trials (with 16 runs instead of 30: 0.86-0.87, the
    percentile interval's small-sample undercoverage)."""
    trials = 80
    flops = np.logspace(17, 21, 30)
    runs = sy.design_runs(np.logspace(7, 10, 30), [1e10]).assign(flops=flops)
    points = pd.DataFrame({"flops": [3e21, 1e22]})
    truth = BUILTIN["envelope"].predict(ENVELOPE, points)
    hits = []
    for trial in range(trials):
        table = sy.law_runs("envelope", ENVELOPE, runs, noise=0.01, seed=1000 + trial)
        result = fit(table, "3", law="envelope", bootstrap=60, bootstrap_starts=0, seed=trial, delta=0.02,
                     n_starts=6, max_iter=100)
        rows = intervals_at(result.to_dict(), points)
        hits.append([row["interval"][0] <= t <= row["interval"][1] for row, t in zip(rows, truth, strict=True)])
    rates = np.mean(hits, axis=0)
    print(f"coverage of the 95% interval at C = 3e21, 1e22 over {trials} trials: {rates}")
    assert np.all(rates >= 0.85) and np.all(rates < 1.0), rates


def test_holdout_runs_report_whether_they_fall_inside_their_interval():
    table = sy.law_runs("chinchilla", CHINCHILLA, sy.design_runs(np.logspace(7, 10, 6), np.logspace(8.5, 11.5, 6)),
                        seed=7)
    result = fit(table, "3", n_starts=100, bootstrap=30, bootstrap_starts=2, holdout_top=3, law="tied")
    assert len(result.holdout) == 3
    for row in result.holdout:
        low, high = row["prediction_interval"]
        assert row["inside_prediction_interval"] == (low <= row["loss"] <= high)
        assert row["interval"][0] >= low and row["interval"][1] <= high   # the scatter only widens it
    samples = result.to_dict()["bootstrap"]["param_samples"]
    assert len(samples) == result.bootstrap["succeeded"] and set(samples[0]) == set(result.params)


def test_predict_without_samples_gives_the_point_only():
    table = sy.law_runs("chinchilla", CHINCHILLA, sy.design_runs(np.logspace(7, 10, 6), np.logspace(8.5, 11.5, 6)),
                        noise=0.0)
    result = fit(table, "3", n_starts=100)
    (row,) = intervals_at(result.to_dict(), {"params": [1e9], "tokens": [2e10]})
    truth = float(BUILTIN["chinchilla"].predict(CHINCHILLA, {"params": [1e9], "tokens": [2e10]})[0])
    assert row["predicted"] == pytest.approx(truth, rel=1e-4) and "interval" not in row
    with pytest.raises(AnalysisError, match="approach 3 or a --law"):
        intervals_at(fit(table, "kaplan").to_dict(), {"params": [1e9], "tokens": [2e10]})


def test_cli_fit_law_then_predict(tmp_path, capsys):
    runs = sy.design_runs(np.logspace(7, 9.5, 4), np.logspace(8.5, 10.5, 3))
    runs = pd.concat([runs.assign(unique_tokens=runs["tokens"] / e) for e in (1, 4, 16)], ignore_index=True)
    runs["tokens"] = runs["unique_tokens"] * np.repeat([1, 4, 16], len(runs) // 3)
    table = sy.law_runs("data-constrained", dict(CHINCHILLA, R_star=15.4), runs, seed=8)
    path, fit_json = tmp_path / "runs.csv", tmp_path / "fit.json"
    table.to_csv(path, index=False)
    assert main(["fit", str(path), "--law", "data-constrained", "--fix", "E=1.69", "--fix", "R_star=15.4",
                 "--n-starts", "60", "--bootstrap", "20", "--bootstrap-starts", "1", "--json", str(fit_json)]) == 0
    out = capsys.readouterr().out
    assert "data-constrained law" in out and "E        = 1.69 (fixed)" in out
    saved = json.loads(fit_json.read_text())
    assert saved["details"]["law"]["fixed"] == {"E": 1.69, "R_star": 15.4}
    points = tmp_path / "points.csv"
    pd.DataFrame({"params": [1e9], "tokens": [8e10], "epochs": [8.0]}).to_csv(points, index=False)
    assert main(["predict", str(fit_json), "--at", "N=1e9,D=1e11,unique_tokens=1e10", "--points", str(points),
                 "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(rows) == 2 and all(r["interval"][0] < r["predicted"] < r["interval"][1] for r in rows)
    assert main(["predict", str(fit_json), "--at", "N=1e9,D=1e11"]) == 2
    assert "unique_tokens" in capsys.readouterr().err
    assert main(["fit", str(path), "--approach", "2", "--law", "tied"]) == 2
