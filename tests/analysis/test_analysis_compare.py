"""compare(): exponent differences and the effective compute multiplier."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from scalelab.analysis import compare
from scalelab.analysis import synthetic as sy
from scalelab.analysis.decide.compare import compute_multiplier, multiplier_trend

LAW_A = sy.ChinchillaLaw()
SCALE = 2.0   # B behaves like A with N and D both 2x larger: 4x compute at the optimum
LAW_B = sy.ChinchillaLaw(A=LAW_A.A * SCALE ** -LAW_A.alpha, B=LAW_A.B * SCALE ** -LAW_A.beta)


def test_multiplier_closed_form():
    a = {"E": 1.0, "A": 10.0, "gamma": 0.5}
    b = {"E": 1.0, "A": 5.0, "gamma": 0.5}
    assert compute_multiplier(a, b, 1e4) == pytest.approx(4.0)
    assert compute_multiplier(b, a, 1e4) == pytest.approx(0.25)
    assert compute_multiplier(a, {"E": 0.5, "A": 0.0, "gamma": 0.5}, 1e4) == math.inf
    assert math.isnan(compute_multiplier(None, b, 1e4))


def test_multiplier_trend_is_the_slope_in_log_compute():
    """L_A = 1 + 10 C^-0.5, L_B = 1 + 5 C^-0.6: m = 4 C^0.2, so the gain grows 10^0.2 per decade."""
    fit_a, fit_b = (SimpleNamespace(frontier={"E": 1.0, "A": a, "gamma": g}) for a, g in ((10.0, 0.5), (5.0, 0.6)))
    draws = [({"frontier_E": 1.0, "frontier_A": 10.0, "frontier_gamma": 0.5},
              {"frontier_E": 1.0, "frontier_A": 5.0, "frontier_gamma": g}) for g in (0.58, 0.6, 0.62)]
    trend = multiplier_trend(fit_a, fit_b, draws, [1e4, 1e6, 1e8])
    assert trend["slope"] == pytest.approx(0.2) and trend["per_decade"] == pytest.approx(10 ** 0.2)
    assert 0 < trend["ci"][0] < 0.2 < trend["ci"][1] and trend["verdict"] == "grows with compute"
    assert multiplier_trend(fit_a, fit_b, draws, [1e4]) == {}


def test_compare_approach3_recovers_known_multiplier():
    grid = (np.logspace(7, 10, 7), np.logspace(8.5, 11.5, 7))
    table_a = sy.grid_runs(LAW_A, *grid, noise=0.0)
    table_b = sy.grid_runs(LAW_B, *grid, noise=0.0)
    result = compare(table_a, table_b, approach="3", budgets=[1e19, 1e21], n_starts=200, names=("base", "new"))
    assert result.converged
    for key in ("a", "b", "alpha", "beta"):
        assert abs(result.differences[key]["difference"]) < 0.01, key
    for row in result.multipliers:
        print(f"compute multiplier at C={row['budget']:.0e}: {row['multiplier']:.3f} (true {SCALE ** 2})")
        assert row["multiplier"] == pytest.approx(SCALE ** 2, rel=0.05)
    assert abs(result.trend["slope"]) < 0.01   # a constant multiplier: no trend
    assert result.to_dict()["names"] == ["base", "new"]


def test_compare_approach2_with_bootstrap_intervals():
    budgets = np.logspace(18, 21, 6)
    table_a = sy.isoflop_runs(LAW_A, budgets, noise=0.001, seed=1)
    table_b = sy.isoflop_runs(LAW_B, budgets, noise=0.001, seed=2)
    result = compare(table_a, table_b, approach="2", budgets=[1e20], bootstrap=30, seed=0)
    diff = result.differences["a"]
    low, high = diff["ci"]
    print(f"approach 2 difference in a: {diff['difference']:.4f} [{low:.4f}, {high:.4f}] (true 0)")
    assert low < 0.0 < high                     # same exponents: the interval covers the true 0
    assert high - low < 0.1
    row = result.multipliers[0]
    low, high = row["ci"]
    print(f"approach 2 multiplier {row['multiplier']:.2f} [{low:.2f}, {high:.2f}] (true 4)")
    assert low < SCALE ** 2 < high
    assert 3.0 < row["multiplier"] < 5.5
    assert any("paired bootstrap" in note for note in result.notes)


def test_sides_fitted_with_different_law_forms_compare_allocation_and_frontiers_only():
    """`report --law auto` chooses each study's form from its own runs; the comparison then compares
    what both forms have (a, b, the frontiers) and says why it leaves their own exponents out."""
    from scalelab.analysis.decide.compare import compare_fits
    from scalelab.analysis.fitting.approaches import fit

    grid = (np.logspace(7, 10, 6), np.logspace(8.5, 11.5, 6))
    fit_a = fit(sy.grid_runs(LAW_A, *grid, noise=0.0), approach="3", law="chinchilla", n_starts=100)
    fit_b = fit(sy.grid_runs(LAW_B, *grid, noise=0.0), approach="3", law="kaplan-e", n_starts=100)
    result = compare_fits(fit_a, fit_b, ("dense", "moe"), budgets=[1e19])
    assert set(result.differences) == {"a", "b"}
    assert any("law forms differ (dense: chinchilla, moe: kaplan-e" in note for note in result.notes)
    assert math.isfinite(result.multipliers[0]["multiplier"])
