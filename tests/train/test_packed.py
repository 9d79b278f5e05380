"""Packed sweeps: members match solo runs, diverge alone, and resume exactly after kill -9."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from scalelab.runtime import faults
from scalelab.sweep.packed import Job, run_jobs
from scalelab.train.build import build_run
from scalelab.train.checkpoint import FILE_LISTS
from scalelab.train.run import fit
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import REPO, TINY, compose_config, finish, jax_cache_env

PACKED = TINY + ["data.tokens=4096"]  # 16 steps of a tiny model


def jobs_for(tmp_path, values, extra=()):
    return [Job(cfg=compose_config(PACKED + [f"optimizer.lr={lr}", *extra]), run_dir=tmp_path / f"lr{lr}")
            for lr in values]


def train_losses(run_dir):
    return np.array([r["train_loss"] for r in read_metrics(run_dir)])


def test_each_member_matches_its_solo_run_on_one_device(tmp_path):
    """Members spread over the 8 test devices train as the same runs alone on one device do."""
    jobs = run_jobs(jobs_for(tmp_path / "packed", [3e-3, 1e-2, 3e-2]))
    assert all(j.error is None for j in jobs), [j.error for j in jobs]
    for lr in (3e-3, 1e-2, 3e-2):
        solo_dir = tmp_path / f"solo{lr}"
        fit(build_run(compose_config(PACKED + [f"optimizer.lr={lr}"]), solo_dir, jax.devices()[:1]))
        packed_dir = tmp_path / "packed" / f"lr{lr}"
        np.testing.assert_allclose(train_losses(packed_dir), train_losses(solo_dir), rtol=1e-4)
        summary, solo = read_summary(packed_dir), read_summary(solo_dir)
        assert summary["status"] == "completed" and len(summary["packed_with"]) == 3
        assert summary["final_eval_loss"] == pytest.approx(solo["final_eval_loss"], rel=1e-4)
    losses = [train_losses(tmp_path / "packed" / f"lr{lr}")[-1] for lr in (3e-3, 1e-2, 3e-2)]
    assert len(set(losses)) == 3  # each member really trained with its own learning rate


def test_members_of_different_lengths_finish_on_their_own_step(tmp_path):
    jobs = [Job(cfg=compose_config(TINY + [f"data.tokens={t}"]), run_dir=tmp_path / f"t{t}") for t in (2048, 4096)]
    run_jobs(jobs)
    assert [read_summary(j.run_dir)["steps_done"] for j in jobs] == [8, 16]
    assert [r["step"] for r in read_metrics(jobs[0].run_dir)] == list(range(1, 9))


def test_a_diverging_member_is_frozen_while_its_siblings_complete(tmp_path):
    jobs = run_jobs(jobs_for(tmp_path, [1e-2, 1e12, 3e-3]))
    statuses = {j.run_dir.name: read_summary(j.run_dir)["status"] for j in jobs}
    assert statuses == {"lr0.01": "completed", "lr1000000000000.0": "diverged", "lr0.003": "completed"}
    assert jobs[1].error is not None and jobs[0].error is None
    assert len(read_metrics(jobs[0].run_dir)) == 16


def sweep_command(sweep_dir, *extra):
    """4 members of the tiny model, 32 steps each, a checkpoint every 8 (all 4 kept)."""
    return [sys.executable, "-c", "from scalelab.cli.entry import train; train()", "-m", "hydra/launcher=packed",
            *TINY, "data.tokens=8192", "checkpoint.every=8", "checkpoint.keep=4", "optimizer.lr=3e-3,1e-2",
            "train.seed=0,1",
            f"hydra.sweep.dir={sweep_dir}", *extra]


def sweep_env() -> dict:
    """Two devices, and the shared compilation cache for every program (the packed launcher does not
    lower the cache's 1 s threshold itself, as `run` does): the relaunch loads what the first launch
    compiled, the same executables."""
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **jax_cache_env(),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def member_losses(sweep_dir):
    return {d.name: {r["step"]: r["train_loss"] for r in read_metrics(d)}
            for d in sorted(sweep_dir.iterdir()) if (d / "summary.json").exists()}


@pytest.mark.slow
def test_kill9_of_a_packed_sweep_resumes_every_member_bitwise(tmp_path):
    env = sweep_env()
    straight = tmp_path / "straight"
    subprocess.run(sweep_command(straight), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    expected = member_losses(straight)
    assert len(expected) == 4 and all(len(v) == 32 for v in expected.values())

    killed = tmp_path / "killed"
    proc = subprocess.Popen(sweep_command(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not list(killed.glob("*/checkpoints/16")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(killed.glob("*/checkpoints/16")), "the sweep never reached its second checkpoint"
    subprocess.run(sweep_command(killed), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    assert member_losses(killed) == expected  # bitwise, each step logged once
    for d in killed.iterdir():
        if (d / "summary.json").exists():
            summary = read_summary(d)
            assert summary["status"] == "completed" and summary["resumed_from"], d.name

    # what a kill -9 during a save can leave, made certain: two members hold checkpoints up to step
    # 24, the other two only step 8. The group resumes every member from 8, in step, so the calls
    # (and their width) are those of the straight run, and the losses repeat bitwise.
    behind = tmp_path / "behind"
    shutil.copytree(straight, behind)
    members = sorted(d for d in behind.iterdir() if (d / "summary.json").exists())
    for k, d in enumerate(members):
        for step in (32,) if k % 2 else (16, 24, 32):
            shutil.rmtree(d / "checkpoints" / str(step))
            (d / FILE_LISTS / f"{step}.json").unlink(missing_ok=True)
        (d / "summary.json").write_text(json.dumps({**read_summary(d), "status": "running"}))
    proc = subprocess.run(sweep_command(behind), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumes at step 8 with its group" in proc.stdout + proc.stderr
    assert member_losses(behind) == expected
    assert all(read_summary(d)["resumed_from"][-1] == 8 for d in members)


@pytest.mark.slow
def test_groups_of_two_models_train_side_by_side_one_per_device(tmp_path):
    """With as many groups as devices, each device trains its own group (lanes), and every member
    still trains as it does alone."""
    env = sweep_env()
    # the solo run: one of the members, alone in a process of one device (its own programs, not the
    # packed ones), trained meanwhile
    solo = tmp_path / "solo"
    alone = subprocess.Popen([sys.executable, "-c", "from scalelab.cli.entry import train; train()", *TINY,
                              "model.d_model=48", "optimizer.lr=1e-2", f"hydra.run.dir={solo}"], cwd=REPO,
                             env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", "-m", "hydra/launcher=packed",
           *TINY, "model.d_model=32,48", "optimizer.lr=3e-3,1e-2", f"hydra.sweep.dir={tmp_path / 'lanes'}"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        code, err = finish(alone)  # killed if the sweep failed to finish
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert code == 0 and read_summary(solo)["status"] == "completed", err[-3000:]
    out = proc.stdout + proc.stderr
    assert "on cpu:0" in out and "on cpu:1" in out
    runs = [d for d in (tmp_path / "lanes").iterdir() if (d / "summary.json").exists()]
    assert len(runs) == 4 and all(read_summary(d)["status"] == "completed" for d in runs)
    config = lambda d: read_summary(d)["config"]
    one = next(d for d in runs if config(d)["model"]["d_model"] == 48 and config(d)["optimizer"]["lr"] == 1e-2)
    np.testing.assert_allclose(train_losses(one), train_losses(solo), rtol=1e-4)


def test_a_foreign_run_dir_is_left_untouched_and_a_member_at_its_last_step_is_finalized(tmp_path):
    """A member whose directory holds a run with another config fails without touching its files (its
    train.log gets the error line);
    a member whose final checkpoint exists but whose summary does not say completed (killed between
    the two) is finalized without stepping; their sibling trains."""
    import json

    first = run_jobs(jobs_for(tmp_path, [1e-2, 3e-3]))
    assert all(j.error is None for j in first)
    foreign = tmp_path / "lr0.01"
    before = {p.name: p.read_bytes() for p in foreign.iterdir() if p.is_file() and p.name != "train.log"}
    ended = tmp_path / "lr0.003"
    summary = read_summary(ended)
    (ended / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    losses = train_losses(ended)

    jobs = [Job(cfg=compose_config(PACKED + ["optimizer.lr=1e-2", "train.seed=5"]), run_dir=foreign),
            Job(cfg=compose_config(PACKED + ["optimizer.lr=3e-3"]), run_dir=ended),
            Job(cfg=compose_config(PACKED + ["optimizer.lr=3e-2"]), run_dir=tmp_path / "fresh")]
    run_jobs(jobs)
    assert "different config" in str(jobs[0].error)
    assert {p.name: p.read_bytes() for p in foreign.iterdir() if p.is_file() and p.name != "train.log"} == before
    again = read_summary(ended)
    assert again["status"] == "completed" and again["final_eval_loss"] == pytest.approx(summary["final_eval_loss"])
    np.testing.assert_array_equal(train_losses(ended), losses)
    assert read_summary(tmp_path / "fresh")["status"] == "completed"


def test_steps_per_call_leaves_every_logged_number_unchanged(tmp_path):
    """K steps per jitted call: members of lengths that are not multiples of K, one evaluating
    mid-call, log the same rows (bit for bit) as with one step per call, and end on their own step."""
    def sweep(root, k):
        jobs = [Job(cfg=compose_config(TINY + [f"data.tokens={t}", *extra]), run_dir=root / f"t{t}")
                for t, extra in ((1280, ()), (2816, ("train.eval_every=3",)), (4096, ()))]
        assert all(j.error is None for j in run_jobs(jobs, steps_per_call=k))
        return [read_metrics(j.run_dir) for j in jobs]

    one, chunked = sweep(tmp_path / "k1", 1), sweep(tmp_path / "k4", 4)
    assert [[r["step"] for r in rows] for rows in chunked] == [list(range(1, n + 1)) for n in (5, 11, 16)]
    assert [r["step"] for r in chunked[1] if "eval_loss" in r] == [3, 6, 9, 11]
    for a, b in zip(one, chunked, strict=True):
        assert [(r["train_loss"], r.get("eval_loss")) for r in a] == [(r["train_loss"], r.get("eval_loss")) for r in b]


@pytest.mark.slow
def test_a_stalled_packed_group_ends_itself_and_the_relaunch_completes_it(tmp_path):
    env = {**sweep_env(), faults.ENV: "stall_at_step:12"}
    stalled = tmp_path / "stalled"
    proc = subprocess.run(sweep_command(stalled, "train.stall_timeout=4"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr[-3000:]  # EXIT_STALLED, whatever the sweep was doing
    members = sorted(d for d in stalled.iterdir() if (d / "summary.json").exists())
    assert len(members) == 4
    for d in members:
        summary = read_summary(d)
        assert summary["status"] == "failed" and summary["error"]["stalled"], d.name
        assert "packed group stalled: no progress" in summary["error"]["message"]
        assert "in at_step" in (d / "train.log").read_text()  # the stuck thread's stack, in every member's log
    env.pop(faults.ENV)
    proc = subprocess.run(sweep_command(stalled, "train.stall_timeout=4"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for d in members:
        summary = read_summary(d)
        assert summary["status"] == "completed" and summary["resumed_from"] == [8], d.name
        assert [r["step"] for r in read_metrics(d)] == list(range(1, 33))


@pytest.mark.slow
def test_a_member_resumed_after_its_shorter_partner_completed_repeats_its_losses_bitwise(tmp_path):
    """Two members of 16 and 32 steps in one program on one device. The longer one, resumed from step
    8 after the shorter completed, trains steps 9-16 beside an idle copy of the completed one (the
    program's width then is 2, as in the run that was not interrupted), then alone: bitwise the same."""
    env = {**sweep_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}

    def command(sweep_dir):
        return [sys.executable, "-c", "from scalelab.cli.entry import train; train()", "-m", "hydra/launcher=packed",
                *TINY, "data.tokens=4096,8192", "checkpoint.every=8", "checkpoint.keep=4", f"hydra.sweep.dir={sweep_dir}"]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    expected = member_losses(straight)
    assert sorted(len(v) for v in expected.values()) == [16, 32]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    longer = next(d for d in resumed.iterdir() if "data.tokens=8192" in d.name)
    for step in (16, 24, 32):  # as if killed after step 8's checkpoint, the shorter member completed
        shutil.rmtree(longer / "checkpoints" / str(step))
        (longer / FILE_LISTS / f"{step}.json").unlink(missing_ok=True)
    (longer / "summary.json").write_text(json.dumps({**read_summary(longer), "status": "running"}))
    proc = subprocess.run(command(resumed), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(longer)["resumed_from"][-1] == 8
    assert member_losses(resumed) == expected
