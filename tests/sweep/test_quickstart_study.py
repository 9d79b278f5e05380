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

from scalelab.analysis.report import report

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
    assert selection["chosen"] in ("chinchilla", "kaplan") and "law form was chosen by the data" in text
    runs = pd.read_csv(rep / "runs.csv")
    assert len(runs) == len(summaries) and {"lr", "seed", "seq_len", "wall_seconds", "status"} <= set(runs)

    stamps = {p: p.stat().st_mtime_ns for p in summaries}
    again = run_study(out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already completed" in again.stdout + again.stderr
    assert {p: p.stat().st_mtime_ns for p in summaries} == stamps

    noise = runs.assign(loss=runs["loss"].mean() * np.exp(np.random.default_rng(0).normal(0.0, 0.02, len(runs))))
    result = report([noise], tmp_path / "noise", approaches=("2", "3"), bootstrap=10, n_starts=100,
                    bootstrap_starts=4)
    assert not result.verdict.determined("2") and not result.verdict.determined("3")
