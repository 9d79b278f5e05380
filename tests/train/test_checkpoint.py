"""Checkpoints and fault tolerance: kill -9, SIGTERM, damaged checkpoints, other meshes, NaN, locks."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from scalelab.cli.train import EXIT_DIVERGED, EXIT_PREEMPTED
from scalelab.train.checkpoint import CheckpointError
from scalelab.train.loop import Diverged
from scalelab.train.run import run
from scalelab.train.runlog import read_metrics, read_summary
from scalelab.train.store import RunDirError, RunLock
from tests.helpers import REPO, TINY, compose_config, finish, jax_cache_env

# slower steps than TINY (so that a kill lands mid-run), 40 steps, a checkpoint every 8
KILLABLE = TINY + ["model.d_model=64", "model.d_ff=128", "data.seq_len=64", "data.tokens=20480",
                   "checkpoint.every=8", "checkpoint.keep=3"]


def start(run_dir, *overrides):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **jax_cache_env()}
    cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
           *KILLABLE, *overrides]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def losses(run_dir):
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir)}


def steps_logged(run_dir):
    return [r["step"] for r in read_metrics(run_dir)]


def ckpt_dir(run_dir):
    return run_dir / "checkpoints"


def finalized(run_dir):
    d = ckpt_dir(run_dir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def saving(run_dir):
    d = ckpt_dir(run_dir)
    return d.exists() and any("tmp" in p.name for p in d.iterdir())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = finish(start(run_dir))
    assert code == 0, err
    return losses(run_dir)


KILL_POINTS = {
    "before the first checkpoint": lambda d: len(steps_logged(d)) >= 2,
    "right after a checkpoint": lambda d: 8 in finalized(d),
    "during an asynchronous save": lambda d: 16 in finalized(d) and saving(d),
}


@pytest.mark.slow
def test_sigkill_anywhere_then_restart_gives_the_uninterrupted_losses(tmp_path, uninterrupted):
    """One run killed with -9 at each kill point in turn (KILL_POINTS' order) and relaunched after
    each kill: every relaunch resumes from the newest finalized checkpoint, or starts afresh."""
    run_dir = tmp_path / "run"
    expected = []
    for point, condition in KILL_POINTS.items():
        proc = start(run_dir)
        hit = wait_for(lambda reached=condition: reached(run_dir), proc)
        proc.send_signal(signal.SIGKILL)
        finish(proc)
        assert hit, f"never reached the kill point: {point}"
        assert read_summary(run_dir)["status"] == "running", point  # what a crash leaves behind
        killed_at = finalized(run_dir)
        if killed_at:
            expected.append(max(killed_at))
    assert len(expected) >= 2  # the last two kill points resume from a checkpoint
    code, err = finish(start(run_dir))
    assert code == 0, err
    summary = read_summary(run_dir)
    assert summary["status"] == "completed"
    assert summary["resumed_from"] == expected
    assert steps_logged(run_dir) == list(range(1, 41))  # each step exactly once
    assert losses(run_dir) == uninterrupted  # bitwise, from every resume step on (and before)


@pytest.mark.slow
def test_sigterm_saves_marks_preempted_exits_distinctly_and_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    proc = start(run_dir, "checkpoint.every=0")
    assert wait_for(lambda: len(steps_logged(run_dir)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == EXIT_PREEMPTED, err
    summary = read_summary(run_dir)
    assert summary["status"] == "preempted"
    saved = finalized(run_dir)
    assert len(saved) == 1 and saved[0] == max(steps_logged(run_dir)) < 40
    code, err = finish(start(run_dir, "checkpoint.every=0"))
    assert code == 0, err
    assert read_summary(run_dir)["resumed_from"] == saved
    assert losses(run_dir) == uninterrupted


MESHY = TINY + ["model.n_heads=4", "model.n_kv_heads=4", "checkpoint.every=6", "checkpoint.keep=5"]


@pytest.mark.slow
def test_a_checkpoint_from_fsdp8_resumes_on_other_meshes(tmp_path):
    full = tmp_path / "fsdp8"
    run(compose_config(MESHY + ["mesh.data=1", "mesh.fsdp=8"]), full)
    reference = losses(full)

    def resume_from_step_6(name, overrides, subprocess_devices=None):
        d = tmp_path / name
        shutil.copytree(full, d)
        shutil.rmtree(d / "checkpoints" / "12")
        summary = json.loads((d / "summary.json").read_text())
        (d / "summary.json").write_text(json.dumps({**summary, "status": "preempted"}))
        if subprocess_devices:
            env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={subprocess_devices}"}
            cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={d}",
                   *MESHY, *overrides]
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
        else:
            run(compose_config(MESHY + overrides), d)
        assert read_summary(d)["resumed_from"] == [6]
        got = losses(d)
        for step in range(7, 13):
            assert got[step] == pytest.approx(reference[step], rel=1e-5), (name, step)

    resume_from_step_6("data2_tensor4", ["mesh.data=2", "mesh.fsdp=1", "mesh.tensor=4"])
    resume_from_step_6("one_device", ["mesh.data=1"], subprocess_devices=1)


def test_a_truncated_newest_checkpoint_is_set_aside_with_a_warning(tmp_path, caplog):
    cfg = compose_config(TINY + ["checkpoint.every=4", "checkpoint.keep=3"])
    run(cfg, tmp_path)
    reference = losses(tmp_path)
    newest = tmp_path / "checkpoints" / "12" / "state"
    for data_file in newest.rglob("d/*"):  # cut every array data file short, as a crash mid-write would
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 3])
    summary = read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "preempted"}))
    with caplog.at_level(logging.WARNING, logger="scalelab"):
        run(compose_config(TINY + ["checkpoint.every=4", "checkpoint.keep=3"]), tmp_path)
    assert "checkpoint at step 12 is damaged" in caplog.text
    assert read_summary(tmp_path)["resumed_from"] == [8]
    assert (tmp_path / "checkpoints_damaged").is_dir()
    assert losses(tmp_path) == reference


def test_a_nan_ends_the_run_diverged_with_a_checkpoint_kept(tmp_path):
    with pytest.raises(Diverged):
        run(compose_config(TINY + ["optimizer.lr=1e12", "optimizer.clip=0", "checkpoint.every=1"]), tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged" and summary["diverged_at_step"] >= 2
    assert summary["last_checkpoint"] is not None and summary["last_checkpoint"] < summary["diverged_at_step"]
    assert (tmp_path / "checkpoints" / str(summary["last_checkpoint"])).is_dir()


def test_the_cli_exits_with_the_diverged_code(tmp_path):
    code, err = finish(start(tmp_path / "run", "optimizer.lr=1e12", "optimizer.clip=0", "data.tokens=2048"))
    assert code == EXIT_DIVERGED, err[-2000:]
    assert "diverged" in err and read_summary(tmp_path / "run")["status"] == "diverged"


def test_a_directory_in_use_by_a_live_run_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match="in use by a live run"):
            run(compose_config(TINY), tmp_path)
    assert read_summary(tmp_path) is None  # nothing was written into the other run's directory


def test_relaunching_a_completed_run_does_nothing_and_a_foreign_config_is_refused(tiny_run):
    run_dir, summary = tiny_run
    before = (run_dir / "metrics.jsonl").read_text()
    again = run(compose_config(TINY + ["train.eval_every=4"]), run_dir)
    assert again["wall_seconds"] == summary["wall_seconds"]
    assert (run_dir / "metrics.jsonl").read_text() == before
    with pytest.raises(RunDirError, match="optimizer.lr"):
        run(compose_config(TINY + ["train.eval_every=4", "optimizer.lr=0.5"]), run_dir)


def test_init_from_loads_parameters_and_refuses_another_architecture(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    tuned = run(compose_config(TINY + [f"init_from={run_dir}", "data.tokens=512"]), tmp_path / "ft")
    scratch = run(compose_config(TINY + ["data.tokens=512"]), tmp_path / "scratch")
    assert tuned["start"] == "fine-tune" and scratch["start"] == "scratch"
    first = lambda d: read_metrics(d)[0]["train_loss"]
    assert first(tmp_path / "ft") < first(tmp_path / "scratch") - 0.5
    with pytest.raises(CheckpointError, match="architecture does not match.*d_model|architecture does not match"):
        run(compose_config(TINY + [f"init_from={run_dir}", "model.d_model=48"]), tmp_path / "bad")
