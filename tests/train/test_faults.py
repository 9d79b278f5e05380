"""Injected faults (SCALELAB_FAULTS): a process dying mid-run, a restore or a save raising a transient
error, and what each leaves behind; fork points kept under any keep/every; forks that only read."""

import json
import os
import subprocess
import sys
import time

import pytest

from scalelab.runtime import faults
from scalelab.train.checkpoint import Checkpointer, CheckpointError, damage, file_list
from scalelab.train.run import run
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import REPO, TINY, compose_config, jax_cache_env

# 24 steps, a checkpoint every 4
RUN = TINY + ["data.tokens=6144", "checkpoint.every=4", "checkpoint.keep=2"]


def train(run_dir, *overrides, faults_spec=None, wait=True):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **jax_cache_env()}
    env.pop(faults.ENV, None)
    if faults_spec:
        env[faults.ENV] = faults_spec
    cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
           *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    return proc.returncode, err


def losses(run_dir):
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir)}


def saved(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def checkpoint_files(run_dir):
    """{path: size} of every file of the finished checkpoints (not of a dead run's unfinished save)."""
    return {p.relative_to(run_dir): p.stat().st_size for step in saved(run_dir)
            for p in (run_dir / "checkpoints" / str(step)).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    code, err = train(run_dir, *RUN)
    assert code == 0, err
    return losses(run_dir)


def test_the_fault_switch_reads_its_spec(monkeypatch):
    assert faults.parse("save:3, restore:1,die_at_step:17") == {"save": "3", "restore": "1", "die_at_step": "17"}
    assert faults.parse("die_at_step:5@1") == {}  # for process 1 only; this is process 0
    with pytest.raises(faults.FaultSpecError, match="explode:1"):
        faults.parse("explode:1")
    monkeypatch.setenv(faults.ENV, "save:2")
    faults.reset()
    faults.maybe_fail("save", "a")
    with pytest.raises(OSError, match="injected fault.*on b"):
        faults.maybe_fail("save", "b")
    faults.maybe_fail("save", "c")  # only the second one
    faults.maybe_fail("restore", "d")  # no restore fault asked for
    faults.reset()


@pytest.mark.slow
def test_a_process_dying_then_a_transient_restore_error_then_a_clean_resume(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    code, _ = train(run_dir, *RUN, faults_spec="die_at_step:10")
    assert code == faults.EXIT_DIED and saved(run_dir) in ([4], [4, 8])  # 8 if its async save finished
    newest = saved(run_dir)[-1]
    before = checkpoint_files(run_dir)

    t0 = time.time()
    code, err = train(run_dir, *RUN, faults_spec="restore:1")
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(error_lines) == 1, err[-3000:]
    assert str(run_dir / "checkpoints" / str(newest)) in error_lines[0] and "left in place" in error_lines[0]
    assert "Traceback" not in err
    assert checkpoint_files(run_dir) == before and not (run_dir / "checkpoints_damaged").exists()
    assert read_summary(run_dir)["status"] == "failed"
    print(f"\nrestore fault refused in {time.time() - t0:.1f} s", file=sys.stderr)

    code, err = train(run_dir, *RUN)
    assert code == 0, err[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["resumed_from"] == [newest]
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 25))
    assert losses(run_dir) == uninterrupted


def test_a_transient_save_error_fails_the_run_and_the_next_attempt_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv(faults.ENV, "save:2")  # the save at step 8
    faults.reset()
    with pytest.raises(OSError, match="injected fault"):
        run(compose_config(RUN), tmp_path)
    assert read_summary(tmp_path)["status"] == "failed" and saved(tmp_path) == [4]
    monkeypatch.delenv(faults.ENV)
    summary = run(compose_config(RUN), tmp_path)
    assert summary["status"] == "completed" and summary["resumed_from"] == [4]
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 25))


def test_damage_is_proven_by_the_files_only(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    step_dir = run_dir / "checkpoints" / "12"
    assert file_list(run_dir, 12).exists()
    assert damage(step_dir, file_list(run_dir, 12)) is None
    listing = json.loads(file_list(run_dir, 12).read_text())["files"]
    assert "meta/metadata" in listing and "crc32" in listing["meta/metadata"]

    import shutil

    copy = tmp_path / "12"
    shutil.copytree(step_dir, copy)
    # without a file list, only the reader's own report of a short file is proof
    assert damage(copy, None, OSError(5, "Input/output error")) is None
    short = ValueError('OUT_OF_RANGE: Error reading "x" in OCDBT database: Error reading Byte range [0, 9) of f')
    assert "shorter than the checkpoint's index" in damage(copy, None, short)
    meta = copy / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"step"', '"stpe"'))  # same size, other bytes
    assert "checksum mismatch in meta/metadata" in damage(copy, file_list(run_dir, 12))
    meta.write_text("{not json")
    assert "unreadable metadata meta/metadata" in damage(copy)
    (copy / "_CHECKPOINT_METADATA").unlink()
    assert "missing file _CHECKPOINT_METADATA" in damage(copy)


@pytest.mark.slow
def test_fork_points_survive_keep_1_and_a_fork_reads_the_stable_run_only(tmp_path):
    """A WSD stable run with fork points, saving every step with keep=1; a branch forks while it runs."""
    stable, branch = tmp_path / "stable", tmp_path / "branch"
    common = TINY + ["schedule=wsd", "schedule.warmup=2"]
    # 64 steps; the branch of 10 steps decays over its last 2: it forks at step 8
    proc = train(stable, *common, "data.tokens=16384", "schedule.decay=0", "role=wsd-stable",
                 "checkpoint.steps=[8,20]", "checkpoint.every=1", "checkpoint.keep=1",
                 faults_spec="step_delay:0.3", wait=False)
    try:
        deadline = time.time() + 240
        while 8 not in saved(stable) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert 8 in saved(stable), proc.stderr.read() if proc.poll() is not None else "step 8 never saved"
        forked = run(compose_config(common + ["data.tokens=2560", "schedule.decay=0.2", f"fork_from={stable}"]),
                     branch)
        still_running = proc.poll() is None
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert still_running  # the fork happened while the stable run was saving every step
    assert forked["status"] == "completed" and forked["start"] == "fork" and forked["resumed_from"] == [8]
    assert read_summary(stable)["status"] == "completed"
    assert saved(stable) == [8, 20, 64]  # every fork point, and the newest (keep=1)


def test_a_reader_never_touches_a_save_in_progress(tiny_run):
    run_dir, _ = tiny_run
    in_progress = run_dir / "checkpoints" / "99.orbax-checkpoint-tmp-1234567"
    in_progress.mkdir()
    (in_progress / "partial").write_text("a save still being written")
    try:
        before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        reader = Checkpointer.reader(run_dir)
        assert reader.steps() == [12]
        reader.close()
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
        assert (in_progress / "partial").exists()
    finally:
        import shutil

        shutil.rmtree(in_progress)


def test_a_restore_error_in_process_leaves_every_checkpoint(tmp_path, monkeypatch):
    run(compose_config(TINY + ["checkpoint.every=4", "checkpoint.keep=3"]), tmp_path)
    summary = read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": "preempted"}))
    monkeypatch.setenv(faults.ENV, "restore:*")
    faults.reset()
    with pytest.raises(CheckpointError, match=r"checkpoints/12: OSError.*left in place"):
        run(compose_config(TINY + ["checkpoint.every=4", "checkpoint.keep=3"]), tmp_path)
    assert saved(tmp_path) == [4, 8, 12] and not (tmp_path / "checkpoints_damaged").exists()


def test_the_watchdog_allows_a_fixed_time_or_a_multiple_of_the_phase_s_longest_gap():
    from scalelab.runtime import watchdog

    assert watchdog.allowed(7.0, longest=100.0) == 7.0  # a fixed timeout is the same for every phase
    assert watchdog.allowed(7.0, None, trained=False) == watchdog.FIRST  # ... once a step has compiled
    assert watchdog.allowed(None, longest=None) == watchdog.FIRST  # not yet measured: it compiles
    assert watchdog.allowed(None, longest=0.01) == watchdog.FLOOR
    assert watchdog.allowed(None, longest=60.0) == watchdog.FACTOR * 60.0
    assert watchdog.allowed(None, longest=None, slowest=30.0) == watchdog.FACTOR * 30.0  # from the step's compile
    assert watchdog.allowed(None, longest=None, slowest=2.0, trained=False) == watchdog.FIRST  # still compiling
    dog = watchdog.Watchdog(None, None, on_stall=lambda message: None)
    dog.beat("train step", 0)
    dog.beat("train step", 1)  # the first gap (compilation) measures nothing
    assert dog._longest == {}
    dog.beat("train step", 2)
    dog.beat("eval", 2)
    assert set(dog._longest) == {"train step"} and not watchdog.Watchdog(0, None, print).enabled


@pytest.mark.slow
def test_a_stalled_run_ends_itself_naming_the_stall_and_the_relaunch_resumes(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    started = time.time()
    code, err = train(run_dir, *RUN, "train.stall_timeout=4", faults_spec="stall_at_step:10")
    took = time.time() - started
    assert code == 5, err[-3000:]  # EXIT_STALLED
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["error"]["stalled"]
    assert "no progress for" in summary["error"]["message"] and "phase 'train step'" in summary["error"]["message"]
    log = (run_dir / "train.log").read_text()
    assert "==== process 0: stalled" in log and "in at_step" in log  # the stuck thread's stack, in the run's log
    assert took < 4 + 60, f"the stalled run took {took:.0f} s to end"  # start-up and compilation, then 4 s
    assert saved(run_dir) == [4, 8]
    code, err = train(run_dir, *RUN, "train.stall_timeout=4")
    assert code == 0, err[-3000:]
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["resumed_from"] == [8]
    assert losses(run_dir) == uninterrupted  # bitwise, each step once


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (CI runs as root); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk) -> None:
    try:
        with open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
    except OSError:  # full (the file may not even open when the run filled the disk first)
        pass


def usage(disk) -> str:
    """What the disk holds, for a failure's message."""
    return "\n".join(f"{p.stat().st_size:>10} {p.relative_to(disk)}" for p in sorted(disk.rglob("*")) if p.is_file())


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_error_line_and_the_relaunch_resumes(small_disk, uninterrupted):
    run_dir = small_disk / "run"
    proc = train(run_dir, *RUN, faults_spec="step_delay:0.3", wait=False)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "4").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert (run_dir / "checkpoints" / "4").exists()
    time.sleep(0.4)  # Orbax's background thread finishes checkpoint 4; checkpoint 8 starts >= 1.2 s after it
    fill(small_disk)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, err[-3000:] + "\n" + usage(small_disk)
    assert "no space left on device under" in errors[0] and "run the same command to resume" in errors[0], err
    assert "Traceback" not in err and "Logging error" not in err, err[-5000:]
    assert saved(run_dir) == [4], err[-3000:] + "\n" + usage(small_disk)  # the checkpoint before the full disk

    (small_disk / "filler").unlink(missing_ok=True)
    code, err = train(run_dir, *RUN)
    assert code == 0, err[-3000:]
    assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["resumed_from"] == [4]
    assert losses(run_dir) == uninterrupted  # bitwise, each step once


@pytest.mark.slow
def test_a_torn_last_line_of_metrics_is_repaired_on_resume(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    code, _ = train(run_dir, *RUN, faults_spec="die_at_step:10")
    assert code == faults.EXIT_DIED
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "tokens": 2560, "flops": 12')  # a kill in the middle of a row
    code, err = train(run_dir, *RUN)
    assert code == 0, err[-3000:]
    text = (run_dir / "metrics.jsonl").read_text()
    assert all(json.loads(line) for line in text.splitlines())  # every line whole
    assert losses(run_dir) == uninterrupted and [r["step"] for r in read_metrics(run_dir)] == list(range(1, 25))
