"""The README's main job, reduced: experiments/quickstart/run.sh end to end on fewer, smaller runs.

Sweep (IsoFLOP sweeper, packed launcher, two lanes) -> status -> report, then the same command again
(every run is skipped), then the report of the same table with its losses replaced by noise, which
must come out *not determined*.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalelab.analysis.reports.study import report

REPO = Path(__file__).resolve().parents[2]
REDUCED = ["hydra.sweeper.budgets=[5e9,1.5e10,3e10]", "hydra.sweeper.models=[d8,d12,d16]",
           "train.eval_tokens=4096", "hydra.sweeper.params={train.seed:0}"]  # one seed, not the study's two


def run_study(out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QUICKSTART_DIR=str(out), QUICKSTART_BOOTSTRAP="20", SCALELAB_HOST_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run(["bash", "experiments/quickstart/run.sh", *REDUCED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_reduced_quickstart_study_end_to_end(tmp_path):
    out = tmp_path / "quickstart"
    done = run_study(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())
    summaries = sorted(out.glob("*/summary.json"))
    assert len(summaries) == len(plan["jobs"]) >= 9
    assert all(json.loads(p.read_text())["status"] == "completed" for p in summaries)

    rep = out / "report"
    for name in ("report.md", "fits.json", "verdict.json", "runs.csv", "training_curves.png",
                 "training_curves.pdf"):
        assert (rep / name).is_file(), name
    text = (rep / "report.md").read_text()
    for png in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):  # every figure the report shows exists
        assert (rep / png).is_file(), png
    assert text.index("## Verdict") < text.index("## Conventions")
    fits = next(iter(json.loads((rep / "fits.json").read_text()).values()))
    for approach in ("2", "3"):
        fit = fits[approach]
        assert fit["status"] in ("determined", "not determined")
        if fit["status"] == "not determined":
            assert fit["reason"] and f"approach {approach}: NOT DETERMINED" in text
        else:
            assert fit["ci"]["a"][0] <= fit["a"] <= fit["ci"]["a"][1]
            assert fit["bootstrap"]["succeeded"] >= 0.8 * fit["bootstrap"]["requested"] == 16
    selection = fits["3"]["details"]["law_selection"]   # run.sh lets the data choose approach 3's law
    assert selection["chosen"] in ("chinchilla", "kaplan", "kaplan-e") and "law form was chosen by the data" in text
    runs = pd.read_csv(rep / "runs.csv")
    assert len(runs) == len(summaries) and {"lr", "seed", "seq_len", "wall_seconds", "status"} <= set(runs)
    # the study scores the built-in tasks at each run's end; the report fits each task's chain
    assert {"task/stdlib_keyword/acc", "task/stdlib_keyword/bpb"} <= set(runs) and runs["task/stdlib_keyword/acc"].notna().all()
    assert "## Tasks" in text and {t["task"] for t in fits["tasks"]} == {"stdlib_close", "stdlib_ident", "stdlib_keyword"}

    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    again = run_study(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps

    # a prediction rung at 2x the largest budget: planned from the report, trained, verified
    env = dict(os.environ, QUICKSTART_DIR=str(out), RUNG_BUDGET="6e10", RUNG_SEEDS="1", RUNG_BOOTSTRAP="10",
               SCALELAB_HOST_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    rung = subprocess.run(["bash", "experiments/quickstart/rung.sh", *REDUCED[2:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert rung.returncode == 0, rung.stdout[-3000:] + rung.stderr[-3000:]
    rung_dir = tmp_path / "quickstart-rung"  # beside the study: its report must not collect the rung's runs
    verified = json.loads((rung_dir / "verify.json").read_text())
    planned = json.loads((rung_dir / "rung.json").read_text())
    assert not list(out.glob("**/rung.json"))
    assert [s["model"] for s in verified["sizes"]] == [s["model"] for s in planned["sizes"]]
    assert all(s["seeds"] == 1 and abs(s["error"]) < 0.2 for s in verified["sizes"]), verified["sizes"]
    assert "best size:" in rung.stdout
    # its lr check: the predicted best size at 0.5x and 2x the lr its rung run got, one seed
    check = verified["lr_check"]
    assert check["model"] == planned["predicted_best"], check
    assert [r["scale"] for r in check["runs"]] == pytest.approx([0.5, 1.0, 2.0], rel=1e-6)
    # and the study's report again, with the rung's section, figure and fits.json rows
    text = (rep / "report.md").read_text()
    assert "## Prediction rung" in text and (rep / "rung.png").is_file()
    rows = next(iter(json.loads((rep / "fits.json").read_text()).values()))["rung"]
    assert rows["budget"] == 6e10 and [r["measured"] for r in rows["sizes"]] == [s["measured"] for s in verified["sizes"]]

    noise = runs.assign(loss=runs["loss"].mean() * np.exp(np.random.default_rng(0).normal(0.0, 0.02, len(runs))))
    result = report([noise], tmp_path / "noise", approaches=("2", "3"), bootstrap=10, n_starts=100,
                    bootstrap_starts=4)
    assert not result.verdict.determined("2") and not result.verdict.determined("3")


CHAOS = ["hydra.sweeper.budgets=[5e9,1.5e10]", "hydra.sweeper.models=[d8,d12,d16]", "train.eval_tokens=4096",
         "hydra.sweeper.params={train.seed:0}", "checkpoint.every=100"]
CHAOS_KILLS = 6  # two of them SIGTERMs (every third kill)
# a failure replays with SCALELAB_CHAOS_SEED=<the seed it printed>
CHAOS_SEED = int(os.environ.get("SCALELAB_CHAOS_SEED", "20261206"))


def start_study(out: Path) -> subprocess.Popen:
    env = dict(os.environ, QUICKSTART_DIR=str(out), QUICKSTART_BOOTSTRAP="20", SCALELAB_HOST_DEVICES="2")
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(["bash", "experiments/quickstart/run.sh", *CHAOS], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def comparable_runs(out: Path) -> pd.DataFrame:
    """runs.csv without what differs between two sweep directories or two attempts: the paths, how
    each run was run (a resumed run's MFU and wall time are its own, and a group formed after a kill
    may have fewer members: `packed_with`)."""
    runs = pd.read_csv(out / "report" / "runs.csv")
    return runs.drop(columns=[c for c in ("sweep", "run_dir", "mfu", "wall_seconds", "packed_with") if c in runs])


def steps_logged_once(out: Path) -> None:
    for metrics in out.glob("*/metrics.jsonl"):
        steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
        assert steps == sorted(set(steps)), f"{metrics}: a step logged twice or out of order"


@pytest.mark.slow
def test_a_study_killed_at_random_moments_ends_bit_for_bit_as_the_uninterrupted_one(tmp_path):
    import signal
    import time

    reference = tmp_path / "reference" / "quickstart"
    proc = start_study(reference)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]

    rng = np.random.default_rng(CHAOS_SEED)
    chaos = tmp_path / "chaos" / "quickstart"
    kills, attempts, log = 0, 0, []
    while kills < CHAOS_KILLS and attempts < 3 * CHAOS_KILLS:
        attempts += 1
        delay = float(rng.uniform(2.0, 25.0))
        proc = start_study(chaos)
        try:
            proc.communicate(timeout=delay)
            log.append(f"attempt {attempts}: finished before {delay:.1f} s")
        except subprocess.TimeoutExpired:
            # SIGTERM to the trainer every third kill (a preemption: it saves, exits 3), else SIGKILL to all
            trainer = subprocess.run(["pgrep", "-g", str(proc.pid), "-f", "scalelab-train"], capture_output=True,
                                     text=True).stdout.split()
            if kills % 3 == 2 and trainer:
                os.kill(int(trainer[0]), signal.SIGTERM)
                proc.communicate(timeout=300)
                log.append(f"attempt {attempts}: SIGTERM at {delay:.1f} s, exit {proc.returncode}")
                # 3: preempted (it saved); 143: the signal came while the sweep planned or ended, with no
                # run in training and nothing to save
                assert proc.returncode in (3, 143), f"chaos seed {CHAOS_SEED}: " + "; ".join(log)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                log.append(f"attempt {attempts}: SIGKILL at {delay:.1f} s")
            kills += 1
            time.sleep(0.2)
    proc = start_study(chaos)
    out, _ = proc.communicate(timeout=900)
    history = f"chaos seed {CHAOS_SEED}: " + "; ".join(log)
    assert kills == CHAOS_KILLS and proc.returncode == 0, history + "\n" + out[-3000:]

    steps_logged_once(chaos)
    pd.testing.assert_frame_equal(comparable_runs(chaos), comparable_runs(reference), check_exact=True,
                                  obj=history)
    assert (chaos / "report" / "fits.json").read_bytes() == (reference / "report" / "fits.json").read_bytes(), history
