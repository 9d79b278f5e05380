"""WSD cooldown branches: one stable run, branches that equal standalone WSD runs."""

import pytest

from scalelab.analysis import collect
from scalelab.cli import main as cli
from scalelab.sweep import wsd
from scalelab.train.run import run
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import TINY, compose_config

COMMON = TINY + ["schedule=wsd", "schedule.warmup=2", "schedule.decay=0.25"]


def test_plan_forks_each_branch_at_its_decay_start():
    branches = wsd.plan(tokens=1000, multipliers=[2, 0.5, 1], tokens_per_step=100, decay=0.2)
    assert [b["steps"] for b in branches] == [5, 10, 20]
    assert [b["fork_step"] for b in branches] == [4, 8, 16]
    assert all(b["tokens"] == b["steps"] * 100 for b in branches)


def test_a_branch_is_bitwise_the_standalone_wsd_run_and_collect_skips_the_stable_run(tmp_path):
    # branches of 8 and 16 steps (tokens 2048 and 4096) fork at steps 6 and 12
    stable = tmp_path / "sweep" / "stable"
    run(compose_config(COMMON + ["data.tokens=3072", "schedule.decay=0", "role=wsd-stable",
                                 "checkpoint.steps=[6,12]", "checkpoint.keep=3"]), stable)
    branch = tmp_path / "sweep" / "D=4096"
    summary = run(compose_config(COMMON + ["data.tokens=4096", f"fork_from={stable}"]), branch)
    alone_dir = tmp_path / "alone"
    alone = run(compose_config(COMMON + ["data.tokens=4096"]), alone_dir)
    assert summary["start"] == "fork" and summary["tokens"] == alone["tokens"] == 4096
    branch_rows = {r["step"]: r["train_loss"] for r in read_metrics(branch)}
    alone_rows = {r["step"]: r["train_loss"] for r in read_metrics(alone_dir)}
    assert sorted(branch_rows) == list(range(13, 17))  # only the cooldown was trained
    assert all(branch_rows[s] == alone_rows[s] for s in branch_rows)
    assert summary["final_eval_loss"] == alone["final_eval_loss"]
    table = collect([tmp_path / "sweep"])
    assert list(table["tokens"]) == [4096]
    assert read_summary(stable)["role"] == "wsd-stable"


def test_a_branch_without_its_fork_checkpoint_is_refused(tmp_path):
    from scalelab.train.checkpoint import CheckpointError

    stable = tmp_path / "stable"
    run(compose_config(COMMON + ["data.tokens=1536", "schedule.decay=0", "role=wsd-stable"]), stable)
    with pytest.raises(CheckpointError, match="no checkpoint at step 12"):
        run(compose_config(COMMON + ["data.tokens=4096", f"fork_from={stable}"]), tmp_path / "branch")


def test_cli_dry_run_prints_the_plan(capsys, tmp_path):
    assert cli.main(["wsd", "--model", "p50k", "--tokens", "2e5", "--sweep-dir", str(tmp_path / "w"), "--dry-run",
                     "data.seq_len=64", "train.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "branch 4x: D=799,744 tokens" in out and "fork_from=" in out and "role=wsd-stable" in out
    assert not (tmp_path / "w").exists()
