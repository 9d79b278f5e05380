"""Recovery of known laws by each fitting approach, plus hold-out and bootstrap mechanics.

Synthetic data come from Chinchilla's law L = 1.69 + 406.4/N^0.34 + 410.7/D^0.28
(compute-optimal exponents a = beta/(alpha+beta) = 0.4516, b = 0.5484).
"""

import math

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis import AnalysisError, fit
from scalelab.analysis import synthetic as sy
from scalelab.analysis.fitting.approach3 import ChinchillaObjective

LAW = sy.ChinchillaLaw()
BAD_START = [0.0, 0.0, 1.0, 2.0, 2.0]   # a, b, e, alpha, beta: A = B = 1, E = e, steep exponents


@pytest.fixture(scope="module")
def grid_table():
    """8 x 8 grid of N in [1e7, 1e10] and D in [3e8, 3e11], 1% log-normal noise."""
    return sy.grid_runs(LAW, np.logspace(7, 10, 8), np.logspace(8.5, 11.5, 8), noise=0.01, seed=0)


@pytest.fixture(scope="module")
def approach3_default(grid_table):
    return fit(grid_table, "3", n_starts=1000)   # a subset of the 4500-point grid, to keep the test fast


def test_approach3_recovers_the_law(approach3_default):
    result = approach3_default
    p = result.params
    print(f"approach 3 fitted vs true: E {p['E']:.4f}/1.69  A {p['A']:.1f}/406.4  B {p['B']:.1f}/410.7  "
          f"alpha {p['alpha']:.4f}/0.34  beta {p['beta']:.4f}/0.28  a {result.a:.4f}/{LAW.a:.4f}")
    assert result.converged, result.message
    # Tolerances for 64 runs with 1% noise (A, B trade off against alpha, beta: compared in log space).
    assert abs(p["E"] - LAW.E) < 0.08
    assert abs(p["alpha"] - LAW.alpha) < 0.03
    assert abs(p["beta"] - LAW.beta) < 0.03
    assert abs(math.log(p["A"] / LAW.A)) < 0.5
    assert abs(math.log(p["B"] / LAW.B)) < 0.5
    assert abs(result.a - LAW.a) < 0.03 and abs(result.b - LAW.b) < 0.03
    # The allocation spends C exactly and no nearby split of it does better under the fitted law.
    c = 1e20
    n_opt, d_opt = float(result.n_opt(c)), float(result.d_opt(c))
    assert LAW.k * n_opt * d_opt == pytest.approx(c, rel=1e-9)
    fitted = sy.ChinchillaLaw(E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])
    for factor in (0.9, 1.1):
        assert fitted.loss(n_opt, d_opt) < fitted.loss(n_opt * factor, d_opt / factor)
    assert float(result.loss_opt(c)) == pytest.approx(float(fitted.loss(n_opt, d_opt)), rel=1e-9)
    d = result.details
    assert d["n_starts"] == 1000
    assert 1 <= d["n_reached_best"] <= d["n_starts"]
    assert d["objective"] > 0


def test_single_bad_start_does_not_recover(grid_table, approach3_default):
    single = fit(grid_table, "3", starts=[BAD_START])
    print(f"single start {BAD_START}: objective {single.details['objective']:.3g} vs "
          f"multi-start {approach3_default.details['objective']:.3g}; params {single.params}")
    assert single.details["n_starts"] == 1
    # It stops at a different, much worse stationary point ...
    assert single.details["objective"] > 5 * approach3_default.details["objective"]
    # ... with parameters far from the truth.
    p = single.params
    assert abs(p["alpha"] - LAW.alpha) > 0.3 or abs(p["E"] - LAW.E) > 0.5


def test_approach3_exact_optimum_matches_closed_form_under_knd(approach3_default):
    """With C = 6*N*D in the table, the numerical optimum is N_opt = G (C/6)^(beta/(alpha+beta))."""
    from scalelab.analysis.fitting.approach3 import compute_optimal_coefficients
    r = approach3_default
    p = r.params
    closed = compute_optimal_coefficients(p["E"], p["A"], p["B"], p["alpha"], p["beta"], 6.0)
    assert r.a == pytest.approx(closed["a"], abs=1e-6) and r.b == pytest.approx(closed["b"], abs=1e-6)
    for c in (1e18, 1e21):
        n_opt = closed["G"] * c ** closed["a"]
        assert float(r.n_opt(c)) == pytest.approx(n_opt, rel=1e-6)
        assert float(r.d_opt(c)) == pytest.approx(c / 6.0 / n_opt, rel=1e-6)
    assert "f(N)/N from 6 to 6" in r.conventions["C(N, D)"]
    assert r.details["interior_optimum"] is True


def test_approach3_flops_per_token_from_table_and_given(grid_table):
    scaled = grid_table.assign(flops=grid_table["flops"] * 1.5)   # flops = 9 N D
    measured = fit(scaled, "3", n_starts=32)
    assert "f(N)/N from 9 to 9" in measured.conventions["C(N, D)"]
    given = fit(scaled, "3", n_starts=32, k=6)
    assert "k = 6 (given)" in given.conventions["C(N, D)"]
    # the same law: spending C at k = 9 is spending C/1.5 at k = 6
    assert float(measured.n_opt(1.5e20)) == pytest.approx(float(given.n_opt(1e20)), rel=1e-3)


def test_default_start_grid_is_the_published_one():
    from scalelab.analysis.fitting.approach3 import start_grid
    grid = start_grid()
    assert grid.shape == (4500, 5)
    assert start_grid(100, seed=1).shape == (100, 5) and start_grid(5000).shape == (5000, 5)


def test_approach3_objective_is_sum_of_huber(grid_table):
    objective = ChinchillaObjective(grid_table["params"], grid_table["tokens"], grid_table["loss"], delta=1e-3)
    theta = np.array([6.0, 6.0, 0.5, 0.34, 0.28])
    f, grad = objective(theta[None, :])
    pred = np.log(np.exp(6.0) / grid_table["params"] ** 0.34 + np.exp(6.0) / grid_table["tokens"] ** 0.28
                  + np.exp(0.5))
    r = pred - np.log(grid_table["loss"])
    huber = np.where(np.abs(r) <= 1e-3, 0.5 * r ** 2, 1e-3 * (np.abs(r) - 0.5e-3))
    assert f[0] == pytest.approx(huber.sum(), rel=1e-10)
    eps = 1e-6
    numeric = [(objective(theta[None, :] + eps * e)[0][0] - objective(theta[None, :] - eps * e)[0][0]) / (2 * eps)
               for e in np.eye(5)]
    assert np.allclose(grad[0], numeric, rtol=1e-4, atol=1e-9)


@pytest.fixture(scope="module")
def isoflop_table():
    budgets = np.logspace(18, 21, 7)
    return sy.isoflop_runs(LAW, budgets, sizes_per_budget=9, span_decades=0.8, noise=0.001, seed=3)


def test_approach2_recovers_exponents(isoflop_table):
    result = fit(isoflop_table, "2")
    print(f"approach 2 fitted vs true: a {result.a:.4f}/{LAW.a:.4f}  b {result.b:.4f}/{LAW.b:.4f}")
    assert result.converged
    # 7 budgets, 9 sizes each over +-0.8 decades, 0.1% noise (sd of a over seeds ~0.004).
    assert abs(result.a - LAW.a) < 0.015
    assert abs(result.b - LAW.b) < 0.015
    assert len(result.details["minima"]) == 7 and not result.details["dropped_budgets"]


def test_approach2_exact_parabola_minima():
    """Loss exactly a parabola in log N around N_opt = G C^a: a and b within 0.01."""
    budgets = np.logspace(17, 21, 9)
    G, a = 0.08, 0.52
    table = sy.parabola_isoflop_runs(budgets, G=G, a=a, sizes_per_budget=9, span_decades=0.6)
    result = fit(table, "2")
    print(f"approach 2 on exact parabolas: a {result.a:.5f}/{a}  b {result.b:.5f}/{1 - a}  G {result.G:.4g}/{G}")
    assert abs(result.a - a) < 0.01
    assert abs(result.b - (1 - a)) < 0.01
    assert result.G == pytest.approx(G, rel=0.05)


def test_approach2_groups_budgets_by_flops_tolerance():
    """Without a budget column, runs whose FLOPs agree within 5% form a budget."""
    budgets = np.logspace(17, 21, 9)
    table = sy.parabola_isoflop_runs(budgets, G=0.08, a=0.52).drop(columns="budget")
    rng = np.random.default_rng(0)
    table["flops"] *= rng.uniform(0.98, 1.02, len(table))
    result = fit(table, "2")
    assert "within 5%" in result.details["budgets_from"]
    assert len(result.details["minima"]) == 9
    assert abs(result.a - 0.52) < 0.01


def test_approach2_drops_edge_minimum_with_warning():
    budgets = np.logspace(17, 21, 5)
    table = sy.parabola_isoflop_runs(budgets, G=0.08, a=0.52)
    last = table["budget"] == budgets[-1]
    centre = 0.08 * budgets[-1] ** 0.52
    table = table[~last | (table["params"] < centre * 0.99)]   # largest budget: minimum beyond the sizes
    with pytest.warns(UserWarning, match=r"dropped budget 1e\+21.*largest sampled size"):
        result = fit(table, "2")
    assert len(result.details["dropped_budgets"]) == 1
    assert len(result.details["minima"]) == 4


@pytest.fixture(scope="module")
def curve_table():
    runs, curves = sy.curve_runs(LAW, np.logspace(6, 9.5, 28), tokens_per_param=200, points=60, noise=0.0)
    runs.attrs["curves"] = curves
    return runs


def test_approach1_recovers_exponents(curve_table):
    result = fit(curve_table, "1")
    print(f"approach 1 fitted vs true: a {result.a:.4f}/{LAW.a:.4f}  b {result.b:.4f}/{LAW.b:.4f}  "
          f"({result.details['used_points']} envelope points, {result.details['winning_sizes']} sizes)")
    assert result.converged
    # 28 sizes over 3.5 decades: the envelope is a staircase of discrete sizes.
    assert abs(result.a - LAW.a) < 0.02
    assert abs(result.b - LAW.b) < 0.02
    assert result.frontier["gamma"] == pytest.approx(LAW.alpha * LAW.beta / (LAW.alpha + LAW.beta), abs=0.01)


def test_approach1_without_curves_says_what_it_needs(curve_table):
    plain = curve_table.copy()
    plain.attrs = {}
    with pytest.raises(AnalysisError, match="approach 1 needs training curves"):
        fit(plain, "1")


def test_kaplan_fit_runs_and_records_conventions(isoflop_table):
    result = fit(isoflop_table, "kaplan")
    assert result.converged
    assert {"E_N", "Nc", "alpha_N", "E_D", "Dc", "alpha_D", "E_C", "Cc", "alpha_C"} <= set(result.params)
    assert 0.0 < result.params["alpha_C"] < 1.0
    assert 0.3 < result.a < 0.7
    assert "non-embedding" in result.conventions["N"]
    assert "'flops'" in result.conventions["C"]


def test_holdout_predicts_the_largest_runs(grid_table):
    result = fit(grid_table, "3", holdout_top=4, n_starts=200)
    assert len(result.holdout) == 4
    largest = grid_table["flops"].nlargest(4).to_numpy()
    assert sorted(r["flops"] for r in result.holdout) == sorted(largest)
    assert result.n_runs == len(grid_table) - 4
    for row in result.holdout:
        assert row["rel_error"] == pytest.approx((row["predicted"] - row["loss"]) / row["loss"])
        assert abs(row["rel_error"]) < 0.05


def test_holdout_frontier_prediction_for_approach2(isoflop_table):
    with pytest.warns(UserWarning, match="dropped budget"):
        result = fit(isoflop_table, "2", holdout_top=3)
    assert len(result.holdout) == 3
    assert "frontier" in result.details["holdout_note"]
    assert all(np.isfinite(r["predicted"]) for r in result.holdout)


def test_bootstrap_gives_intervals_and_counts_failures(isoflop_table):
    result = fit(isoflop_table, "2", bootstrap=40, seed=1)
    info = result.bootstrap
    assert info["requested"] == 40 and info["succeeded"] + info["failed"] == 40
    assert info["succeeded"] == 40 and "residual bootstrap" in info["method"]
    assert info["interval_method"]["a_b"] == {"a": "BCa", "b": "BCa"}
    low, high = result.ci["a"]
    assert low < result.a < high
    assert high - low < 0.03   # about 4 sd of a over noise seeds (0.0034) for this design
    row = result.allocation[0]
    assert row["N_opt_ci"][0] < row["N_opt"] < row["N_opt_ci"][1]
    assert result.status == "determined", result.reason


def test_bootstrap_is_fail_soft():
    """Resamples that lose a budget's bracketing fail; they are counted, not fatal."""
    budgets = np.logspace(17, 20, 4)
    table = sy.parabola_isoflop_runs(budgets, G=0.08, a=0.5, sizes_per_budget=3, span_decades=0.3)
    with pytest.warns(UserWarning, match="resamples failed"):
        result = fit(table, "2", bootstrap=30, seed=0)
    assert result.bootstrap["failed"] > 0
    assert result.bootstrap["failure_reasons"]
    assert result.bootstrap["succeeded"] + result.bootstrap["failed"] == 30


def test_to_dict_is_json_safe(isoflop_table):
    import json
    result = fit(isoflop_table, "2", bootstrap=5, budgets=[1e19, 1e22])
    text = json.dumps(result.to_dict(), allow_nan=False)
    data = json.loads(text)
    assert data["approach"] == "2" and data["converged"] is True
    assert [row["budget"] for row in data["allocation"]] == [1e19, 1e22]
    assert "samples" not in data


def test_default_budgets_decade_grid(grid_table):
    result = fit(grid_table, "3", n_starts=32)
    budgets = [row["budget"] for row in result.allocation]
    lo, hi = grid_table["flops"].min(), grid_table["flops"].max()
    assert budgets == [10.0 ** k for k in range(math.ceil(math.log10(lo)), math.floor(math.log10(hi)) + 1)]


def test_published_table_typed_by_hand():
    """A small published-style table (no budget, model or status columns) fits the same way."""
    rows = []
    for c in (6e18, 1e19, 3e19, 6e19, 1e20):
        for n in np.asarray(LAW.n_opt(c)) * np.array([0.3, 0.5, 0.8, 1.0, 1.3, 2.0, 3.0]):
            d = c / (6 * n)
            rows.append({"params": float(f"{n:.3g}"), "tokens": float(f"{d:.3g}"), "flops": c,
                         "loss": round(float(LAW.loss(n, d)), 3)})
    table = pd.DataFrame(rows)
    result = fit(table, "2")
    assert abs(result.a - LAW.a) < 0.05
