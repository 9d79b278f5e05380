"""Analysis that tells the truth about itself: the study's exact C, determined or not, BCa, held-out, verdict.

The ladder law counts FLOPs like the ledger does for the tiny models
(f(N) = 6N + 630*sqrt(N) per token, 10% to 90% above 6N), so C is not k*N*D
and b is not 1 - a.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from scalelab.analysis import fit, read_verdict, report
from scalelab.analysis import synthetic as sy
from scalelab.analysis.bootstrap import bca_interval
from scalelab.analysis.fitting.optimum import exact_optimum
from scalelab.analysis.result import FitResult
from scalelab.analysis.runs.flops_model import flops_per_token_model
from scalelab.analysis.verdict import assess

LADDER = sy.ChinchillaLaw(E=1.2, A=100.0, B=300.0, alpha=0.5, beta=0.45, k=6.0, overhead=630.0)
BUDGETS = np.geomspace(2e11, 2e13, 5)
TRUE_A, TRUE_B = LADDER.exponents(BUDGETS[0], BUDGETS[-1])


@pytest.fixture(scope="module")
def dense_isoflop():
    """9 sizes per budget around the true optimum, 0.1% noise, C = f(N)*D exactly."""
    return sy.isoflop_runs(LADDER, BUDGETS, sizes_per_budget=9, span_decades=0.6, noise=0.001, seed=5)


@pytest.fixture(scope="module")
def quickstart_like():
    """The quickstart's shape: 5 budgets over 100x, the ladder p15k..p1m, one seed, 1% noise."""
    return sy.ladder_isoflop_runs(LADDER, BUDGETS, noise=0.01, seed=3)


# ---------------------------------------------------------------- C(N, D) = f(N) * D

def test_flops_per_token_model_interpolates_and_extrapolates():
    sizes = np.array(sy.LADDER_SIZES, dtype=float)
    table = pd.DataFrame({"params": sizes, "tokens": 1e6, "flops": LADDER.flops_per_token(sizes) * 1e6})
    model = flops_per_token_model(table)
    assert model(sizes) == pytest.approx(LADDER.flops_per_token(sizes), rel=1e-12)
    between = np.sqrt(sizes[2] * sizes[3])     # log-log interpolation: the geometric mean of the knots
    assert float(model(between)) == pytest.approx(
        math.sqrt(LADDER.flops_per_token(sizes[2]) * LADDER.flops_per_token(sizes[3])), rel=1e-12)
    end_slope = math.log(LADDER.flops_per_token(sizes[-1]) / LADDER.flops_per_token(sizes[-2])) / math.log(
        sizes[-1] / sizes[-2])
    assert float(model(sizes[-1] * 10)) == pytest.approx(LADDER.flops_per_token(sizes[-1]) * 10 ** end_slope)
    assert float(flops_per_token_model(table, k=6)(1e5)) == pytest.approx(6e5)
    assert model.range_of_ratio() == pytest.approx((6.65, 11.44), rel=1e-2)


def test_approaches_2_and_3_recover_the_allocation_under_exact_c(dense_isoflop):
    assert TRUE_A + TRUE_B > 1.04      # the overhead makes D_opt grow faster than C / N_opt
    two = fit(dense_isoflop, "2")
    three = fit(dense_isoflop, "3", n_starts=400)
    print(f"truth a {TRUE_A:.4f} b {TRUE_B:.4f}; approach 2 a {two.a:.4f} b {two.b:.4f}; "
          f"approach 3 a {three.a:.4f} b {three.b:.4f}")
    assert abs(two.a - TRUE_A) < 0.015 and abs(two.b - TRUE_B) < 0.015
    assert abs(three.a - TRUE_A) < 0.01 and abs(three.b - TRUE_B) < 0.01
    for c in BUDGETS:   # D_opt spends exactly C at the model's own flops per token
        assert float(three.d_opt(c)) * float(LADDER.flops_per_token(three.n_opt(c))) == pytest.approx(c, rel=0.01)
    # The same law with one median k (C = k*N*D) gets b wrong: the check above can fail.
    k = float(np.median(dense_isoflop["flops"] / (dense_isoflop["params"] * dense_isoflop["tokens"])))
    constant_k = fit(dense_isoflop, "3", n_starts=400, k=k)
    assert abs(constant_k.b - TRUE_B) > 0.03 and constant_k.a + constant_k.b == pytest.approx(1.0)


def test_exact_optimum_is_the_brute_force_minimum(dense_isoflop):
    fpt = flops_per_token_model(dense_isoflop)
    params = {"E": LADDER.E, "A": LADDER.A, "B": LADDER.B, "alpha": LADDER.alpha, "beta": LADDER.beta}
    n_opt, d_opt, loss, interior = exact_optimum(params, fpt, BUDGETS)
    grid = np.geomspace(1e3, 1e8, 200001)
    for c, n, d, value in zip(BUDGETS, n_opt, d_opt, loss, strict=True):
        brute = LADDER.loss(grid, c / fpt(grid))
        assert n == pytest.approx(grid[np.argmin(brute)], rel=1e-3)
        assert d == pytest.approx(c / float(fpt(n)), rel=1e-9)
        assert value <= brute.min() and value == pytest.approx(brute.min(), rel=1e-7)
    assert interior.all()


# ---------------------------------------------------------------- determined or not

def _fit_result(**changes) -> FitResult:
    base = dict(approach="3", converged=True, a=0.5, b=0.5,
                params={"E": 1.2, "A": 100.0, "B": 300.0, "alpha": 0.5, "beta": 0.45},
                ci={"a": (0.45, 0.55), "b": (0.45, 0.55), "alpha": (0.4, 0.6), "beta": (0.4, 0.5)},
                bootstrap={"requested": 50, "succeeded": 50}, details={"interior_optimum": True, "loss_min": 1.3})
    base.update(changes)
    return FitResult(**base)


@pytest.mark.parametrize("changes, needle", [
    ({}, None),
    ({"params": {"E": 1.2, "A": 5.4e81, "B": 300.0, "alpha": 20.1, "beta": 0.45}}, "alpha = 20.1"),
    ({"params": {"E": 1.2, "A": 5.4e81, "B": 300.0, "alpha": 0.5, "beta": 0.45}}, "A = 5.4e+81 is beyond"),
    ({"a": 1.0}, "a = 1 is outside the plausible range"),
    ({"b": 0.053, "ci": {"a": (0.45, 0.55), "b": (0.158, 0.578)}}, "b = 0.053 lies outside its own 95% interval"),
    ({"bootstrap": {"requested": 50, "succeeded": 8}}, "only 8 of 50 bootstrap resamples fitted"),
    # no resample fitted at all: no interval to compare (this raised a TypeError once)
    ({"bootstrap": {"requested": 20, "succeeded": 0}, "ci": {}}, "only 0 of 20 bootstrap resamples fitted"),
    ({"ci": {"a": (-0.4, 0.64), "b": (0.45, 0.55)}}, "interval of a, [-0.4, 0.64], reaches outside [0, 1]"),
    ({"params": {"E": 1e-9, "A": 100.0, "B": 300.0, "alpha": 0.5, "beta": 0.45}}, "E = 1e-09 is at its lower"),
    ({"details": {"interior_optimum": False}}, "no interior compute-optimal N"),
    ({"converged": False, "message": "did not converge (test)"}, "did not converge (test)"),
])
def test_assess_names_every_reason(changes, needle):
    status, reasons = assess(_fit_result(**changes))
    if needle is None:
        assert status == "determined" and not reasons
    else:
        assert status == "not determined" and any(needle in r for r in reasons), reasons


def test_bca_matches_scipy_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    data = rng.lognormal(0.0, 1.0, size=40)          # skewed: BCa and percentile differ
    res = stats.bootstrap((data,), np.mean, n_resamples=4000, method="BCa", random_state=1)
    jackknife = [np.mean(np.delete(data, i)) for i in range(len(data))]
    (low, high), method = bca_interval(res.bootstrap_distribution, data.mean(), jackknife)
    assert method == "BCa"
    assert low == pytest.approx(res.confidence_interval.low, rel=0.01)
    assert high == pytest.approx(res.confidence_interval.high, rel=0.01)
    assert low < data.mean() < high
    (low, high), method = bca_interval(data + 10.0, data.mean(), jackknife)   # all on one side
    assert method.startswith("percentile") and "one side" in method


def test_bca_survives_jackknife_values_beyond_float_range_cubed():
    """A degenerate fit's coefficients (A ~ 1e126 in some jackknife fits) must not crash the interval."""
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(280.0, 5.0, size=40))     # ~1e121 to 1e126
    jackknife = np.exp(rng.normal(280.0, 5.0, size=12))
    (low, high), method = bca_interval(values, float(np.median(values)), jackknife)
    assert method == "BCa" and np.isfinite([low, high]).all() and low < high
    scaled, _ = bca_interval(values / 1e120, float(np.median(values)) / 1e120, jackknife / 1e120)
    assert scaled == pytest.approx((low / 1e120, high / 1e120), rel=1e-9)   # the acceleration is scale-free


def test_bootstrap_intervals_contain_the_estimates(quickstart_like):
    for approach, options in (("2", {}), ("3", {"n_starts": 300, "bootstrap_starts": 8})):
        result = fit(quickstart_like, approach, bootstrap=30, seed=0, **options)
        b = result.bootstrap
        assert b["succeeded"] >= 0.9 * b["requested"], (approach, b["failure_reasons"])
        assert b["interval_method"]["a_b"] == {"a": "BCa", "b": "BCa"} and b["jackknife_fits"] > 10
        for key in ("a", "b"):
            low, high = result.ci[key]
            assert low <= getattr(result, key) <= high, (approach, key)
        assert result.status == "determined", (approach, result.reason)


# ---------------------------------------------------------------- held-out check

def test_holdout_predicts_the_best_run_of_the_largest_budget(quickstart_like):
    largest = quickstart_like[quickstart_like["budget"] == BUDGETS[-1]]
    for approach in ("2", "3"):
        result = fit(quickstart_like, approach, holdout_budget=True, n_starts=300) if approach == "3" \
            else fit(quickstart_like, approach, holdout_budget=True)
        assert result.n_runs == len(quickstart_like) - len(largest)
        (row,) = result.holdout
        assert row["loss"] == pytest.approx(largest["loss"].min())
        assert row["rel_error"] == pytest.approx((row["predicted"] - row["loss"]) / row["loss"])
        assert abs(row["rel_error"]) < 0.03, (approach, row)
        assert result.details["holdout"]["budget"] == pytest.approx(BUDGETS[-1])
    assert "frontier_rel_error" in row and row["predicts"] == "L(N, D) of the run"


def test_with_seeds_the_held_out_target_is_the_best_points_mean(quickstart_like):
    """Two seeds per point: the target is the lowest *mean* over a point's seeds, not the lowest run."""
    from scalelab.analysis.fitting.approach2 import budget_minimum
    from scalelab.analysis.fitting.approaches import split_largest_budget

    rng = np.random.default_rng(4)
    seeds = pd.concat([quickstart_like.assign(seed=s) for s in (0, 1)], ignore_index=True)
    seeds["loss"] = seeds["loss"] * np.exp(rng.normal(0.0, 0.02, len(seeds)))
    largest = seeds[seeds["budget"] == BUDGETS[-1]]
    means = largest.groupby(["params", "tokens"])["loss"].mean()
    _, best, info = split_largest_budget(seeds)
    assert info["n_repeats"] == 2 and len(best) == 1
    assert best["loss"].iloc[0] == pytest.approx(means.min())
    assert (best["params"].iloc[0], best["tokens"].iloc[0]) == means.idxmin()
    # one size's lucky seed does not make it the budget's minimum: sizes are compared by their mean
    params = np.repeat([1.0, 2.0, 4.0], 2)
    loss = np.array([2.0, 2.0, 1.5, 2.3, 1.95, 1.95])   # size 2: one lucky, one unlucky seed (mean 1.9)
    minimum, reason = budget_minimum(params, 1e6 / params, loss)
    assert minimum is not None, reason
    minimum, reason = budget_minimum(params, 1e6 / params, np.array([2.0, 2.0, 1.5, 2.5, 1.9, 1.9]))
    assert minimum is None and "largest sampled size" in reason


# ---------------------------------------------------------------- the report's verdict

def test_report_verdict_on_a_quickstart_like_study(quickstart_like, tmp_path):
    out = tmp_path / "rep"
    result = report([quickstart_like], out, approaches=("2", "3"), bootstrap=30, n_starts=300,
                    bootstrap_starts=8)
    verdict = result.verdict
    assert verdict.determined("2") and verdict.determined("3"), verdict.lines
    assert verdict.agree("2", "3", "a")
    assert abs(verdict.approaches["2"]["a"] - verdict.approaches["3"]["a"]) < 0.1
    assert verdict.frontier["source"] == "3"
    assert set(verdict.holdout["rel_error"]) == {"2", "3"}
    text = (out / "report.md").read_text()
    verdict_text = text[text.index("## Verdict"):text.index("## Conventions")]
    for needle in ("approach 2: determined", "approach 3: determined", "approach 2 vs approach 3", "Frontier",
                   "L(C) =", "Held-out error", "largest budget", "95% prediction interval ["):
        assert needle in verdict_text, needle
    # approach 3's held-out refit is bootstrapped: its row says whether the run lies in its interval
    (row,) = result.studies[0].fits["3"].holdout
    low, high = row["prediction_interval"]
    assert low < row["predicted"] < high and row["inside_prediction_interval"] == (low <= row["loss"] <= high)
    assert "6*(N_matmul + d*V) + 12*L*T*H*hd" in text and "non-embedding" in text
    assert read_verdict(out)[verdict.study].determined("3")


def test_degenerate_studies_are_not_determined(tmp_path):
    """Pure noise (loss independent of N and D) and minima at the edge of every budget."""
    noise = sy.ladder_isoflop_runs(LADDER, BUDGETS, seed=0)
    noise["loss"] = 1.5 * np.exp(np.random.default_rng(0).normal(0.0, 0.02, len(noise)))
    edge = sy.ladder_isoflop_runs(sy.ChinchillaLaw(E=1.2, A=3.0, B=3000.0, alpha=0.5, beta=0.45,
                                                   overhead=630.0), BUDGETS)
    for name, table, approaches in (("noise", noise, ("2", "3")), ("edge", edge, ("2",))):
        out = tmp_path / name
        # few resamples and starts: the verdicts rest on the full-data fits (asserted below), whose
        # 300 starts are kept; each resample still refits, and the jackknife is 20 fits whatever this is
        result = report([table], out, approaches=approaches, bootstrap=10, n_starts=300, bootstrap_starts=4)
        fits = json.loads((out / "fits.json").read_text())[result.verdict.study]
        text = (out / "report.md").read_text()
        for approach in approaches:
            assert fits[approach]["status"] == "not determined" and fits[approach]["reason"], (name, approach)
            assert not result.verdict.determined(approach)
            assert f"approach {approach}: NOT DETERMINED**: {fits[approach]['reason'][:40]}" in text
        assert "Agreement**: not stated" in text
        if name == "noise":   # the reasons of the full-data fits, not of the bootstrap
            assert "only 2 budgets have a bracketed minimum" in fits["2"]["reason"], fits["2"]["reason"]
            assert "is outside the plausible range" in fits["3"]["reason"], fits["3"]["reason"]
    assert "not bracketed" in fits["2"]["reason"]


def test_cli_fit_holdout_budget_and_report_verdict(quickstart_like, tmp_path, capsys):
    from scalelab.cli import analyze as cli
    path = tmp_path / "runs.csv"
    quickstart_like.to_csv(path, index=False)
    out_json = tmp_path / "fit.json"
    assert cli.main(["fit", str(path), "--approach", "2", "--holdout-budget", "--bootstrap", "10",
                     "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert data["status"] == "determined" and data["details"]["holdout"]["kind"] == "largest budget"
    assert len(data["holdout"]) == 1 and data["bootstrap"]["succeeded"] == 10
    assert cli.main(["report", str(path), "-o", str(tmp_path / "rep"), "--approaches", "2",
                     "--bootstrap", "10"]) == 0
    printed = capsys.readouterr().out
    assert "verdict:" in printed and "approach 2: determined" in printed
    assert (tmp_path / "rep" / "verdict.json").is_file()
