"""The two-step task chain on synthetic data from a known chain: (N, D) -> bits per byte by
Chinchilla's law, bits per byte -> accuracy by a sigmoid, accuracies measured on a few hundred
items. The fit recovers the exponents and the midpoint, its intervals cover the truth at close to
95%, a task stuck at chance is not determined, and the CLI writes its result and figure."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from scalelab.analysis import synthetic as sy
from scalelab.analysis.tasks.chain import fit_chain, holdout_chain, sigmoid

LAW = sy.ChinchillaLaw(E=0.8, A=60.0, B=200.0, alpha=0.34, beta=0.30)
SIGMOID = {"chance": 0.25, "ceiling": 0.9, "mid": 1.2, "k": 6.0}
BUDGETS = np.logspace(15, 18, 5)
SIZES = np.logspace(6, 9, 13)
TARGET = (3e9, 6e10)  # about 10x the largest budget, past every run's bits per byte


def true_accuracy(params, tokens):
    return sigmoid(LAW.loss(params, tokens), **SIGMOID)


def study(seed: int, noise: float = 0.01, items: int = 400, accuracy=true_accuracy):
    runs = sy.ladder_isoflop_runs(LAW, BUDGETS, sizes=SIZES, tokens_per_param=(2, 1000))
    rng = np.random.default_rng(seed)
    bpb = LAW.loss(runs["params"], runs["tokens"]) * np.exp(noise * rng.standard_normal(len(runs)))
    runs["task/t/bpb"] = bpb
    runs["task/t/acc"] = rng.binomial(items, sigmoid(bpb, **SIGMOID) if accuracy is true_accuracy
                                      else accuracy(runs["params"], runs["tokens"])) / items
    runs["loss"] = bpb * 1.1
    runs["status"] = "completed"
    return runs


def test_the_chain_recovers_a_known_chain():
    chain = fit_chain(study(0, noise=0.003, items=4000), "t", bootstrap=0, items=4000)
    assert chain.determined, chain.reason
    assert abs(chain.law_values["alpha"] - LAW.alpha) <= 0.03 and abs(chain.law_values["beta"] - LAW.beta) <= 0.03
    assert abs(chain.sigmoid["mid"] / SIGMOID["mid"] - 1) <= 0.05


def covered(seed: int) -> tuple[bool, bool]:
    chain = fit_chain(study(seed), "t", bootstrap=40, seed=seed, items=400)
    p = chain.predict(*TARGET)
    truth = float(true_accuracy(*TARGET))
    return bool(p["interval"][0] <= truth <= p["interval"][1]), bool(abs(chain.sigmoid["mid"] / SIGMOID["mid"] - 1) <= 0.05)


@pytest.mark.slow
def test_the_chains_intervals_cover_the_truth_at_close_to_95_percent():
    """30 studies (1% noise on bits per byte, 400 items a measurement): the 95% interval of the
    expected accuracy at a target 10x beyond the largest budget covers the true chain's value. 30
    trials tell 95% (28.5 expected hits) from 75% (22.5): the bar is 26."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(covered, range(30)))
    rate = np.mean([c for c, _ in results])
    print(f"coverage of the chain's 95% interval 10x beyond: {rate:.2f}; midpoints within 5%: "
          f"{np.mean([m for _, m in results]):.2f}")
    assert rate >= 26 / 30


def test_a_task_at_chance_is_not_determined_and_the_holdout_checks_the_largest_budget():
    flat = fit_chain(study(1, accuracy=lambda n, d: np.full(len(n), 0.25)), "t", bootstrap=0, items=400)
    assert not flat.determined and "never leaves chance" in flat.reason
    held = holdout_chain(study(2), "t", bootstrap=20, items=400)
    assert held["budget"] == pytest.approx(BUDGETS[-1]) and held["interval"][0] < held["interval"][1]
    assert abs(held["error"]) < 0.1 and held["determined"]


def test_cli_tasks_writes_its_result_and_figure(tmp_path, capsys):
    from scalelab.cli.analyze import main

    table = tmp_path / "runs.csv"
    study(3).to_csv(table, index=False)
    out = tmp_path / "tasks"
    assert main(["tasks", str(table), "--task", "t", "--bootstrap", "20", "--items", "400",
                 "--target", f"params={TARGET[0]:g},tokens={TARGET[1]:g}", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out" in printed and "step 2" in printed and "at N 3e+09" in printed
    result = json.loads((out / "tasks.json").read_text())
    assert result["determined"] and "interval" in result["target"] and (out / "task_t.png").exists()
    assert main(["tasks", str(table), "--task", "nope"]) != 0
    assert "task/nope/acc" in capsys.readouterr().err


def test_a_rung_is_checked_against_the_chain_fitted_to_the_study():
    """Runs at 10x the largest budget, two seeds a size, drawn from the true chain: each size's
    measured mean accuracy and bits per byte lie inside the chain's prediction intervals for a
    mean of two; a rung measured off the chain (accuracy lowered by 0.15) falls outside."""
    from scalelab.analysis.tasks.chain import check_at, rung_tasks

    base = study(4)
    rng = np.random.default_rng(5)
    sizes = np.array([2e9, 3e9, 4.5e9])
    rung = sy.ladder_isoflop_runs(LAW, [10 * BUDGETS[-1]], sizes=sizes, tokens_per_param=(0.01, 1e5))
    rung = rung.loc[rung.index.repeat(2)].reset_index(drop=True)
    bpb = LAW.loss(rung["params"], rung["tokens"]) * np.exp(0.01 * rng.standard_normal(len(rung)))
    rung["task/t/bpb"], rung["task/t/acc"] = bpb, rng.binomial(400, sigmoid(bpb, **SIGMOID)) / 400
    rung["status"], rung["task/t/items"] = "completed", 400
    (entry,) = rung_tasks(base, rung, bootstrap=40, items=400)
    assert entry["task"] == "t" and entry["determined"] and len(entry["sizes"]) == 3
    assert all(r["seeds"] == 2 and r["inside"] and r["bpb_inside"] for r in entry["sizes"]), entry["sizes"]
    off = rung.assign(**{"task/t/acc": rung["task/t/acc"] - 0.15})
    chain = fit_chain(base, "t", bootstrap=40, items=400)
    assert not any(r["inside"] for r in check_at(chain, off))
