"""Bootstrap intervals cover the true parameters at about their nominal 95% rate (slow)."""

import numpy as np
import pytest

from scalelab.analysis import fit
from scalelab.analysis import synthetic as sy

LAW = sy.ChinchillaLaw()


def coverage(hits) -> float:
    return float(np.mean(hits))


@pytest.mark.slow
def test_approach2_bootstrap_coverage_of_exponents():
    trials, resamples = 20, 50
    hits = {"a": [], "b": []}
    for trial in range(trials):
        table = sy.isoflop_runs(LAW, np.logspace(18, 21, 6), sizes_per_budget=9, span_decades=0.8,
                                noise=0.002, seed=100 + trial)
        result = fit(table, "2", bootstrap=resamples, seed=trial)
        for key, truth in (("a", LAW.a), ("b", LAW.b)):
            low, high = result.ci[key]
            hits[key].append(low <= truth <= high)
    rates = {k: coverage(v) for k, v in hits.items()}
    print(f"approach 2 bootstrap coverage over {trials} trials (nominal 0.95): {rates}")
    for key, rate in rates.items():
        assert rate >= 0.8, (key, rate)


@pytest.mark.slow
def test_approach3_bootstrap_coverage_of_parameters():
    trials, resamples = 10, 30
    truths = {"E": LAW.E, "alpha": LAW.alpha, "beta": LAW.beta, "a": LAW.a}
    hits = {k: [] for k in truths}
    for trial in range(trials):
        table = sy.grid_runs(LAW, np.logspace(7, 10, 7), np.logspace(8.5, 11.5, 7), noise=0.01,
                             seed=200 + trial)
        result = fit(table, "3", n_starts=100, bootstrap=resamples, bootstrap_starts=0, seed=trial)
        for key, truth in truths.items():
            low, high = result.ci[key]
            hits[key].append(low <= truth <= high)
    rates = {k: coverage(v) for k, v in hits.items()}
    print(f"approach 3 bootstrap coverage over {trials} trials (nominal 0.95): {rates}")
    for key, rate in rates.items():
        assert rate >= 0.7, (key, rate)
