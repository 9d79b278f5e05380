"""Two JAX processes on loopback train the same run as one process with the same devices, and stop
together when only one of them is told to."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from scalelab.runtime import faults
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import REPO, TINY, jax_cache_env

OVERRIDES = TINY + ["data.tokens=4096", "checkpoint.every=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_dir, *extra):
    return [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
            *OVERRIDES, *extra]


def env_with(devices, **extra):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **jax_cache_env(),
           **extra}
    if faults.ENV not in extra:
        env.pop(faults.ENV, None)
    return env


def start_pair(run_dir, *extra, env_extra=None):
    """Two processes of two devices each, joined into one run."""
    port = free_port()
    return [subprocess.Popen(command(run_dir, f"distributed.coordinator=127.0.0.1:{port}",
                                     "distributed.num_processes=2", f"distributed.process_id={i}", *extra),
                             cwd=REPO, env=env_with(2, **(env_extra or {})), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            for i in range(2)]


def wait_pair(procs, timeout=600):
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # always end both, whatever happened
            p.kill()
            p.wait()


# an MoE whose 4 experts are split over the 4 devices of both processes (tokens cross processes)
EXPERT_PARALLEL = ["model.moe.experts=4", "model.moe.top_k=2", "mesh.expert=4", "mesh.data=1"]


@pytest.mark.slow
@pytest.mark.parametrize("extra, multi_extra", [([], []), (EXPERT_PARALLEL, ["mesh.impl=shard_map"])],
                         ids=["dense", "moe-expert-parallel"])
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path, extra, multi_extra):
    """The MoE pair runs the shard_map step (its all-to-all crosses the processes) against one
    process's jit step: both implementations and both placements give one run."""
    single = tmp_path / "single"
    proc = subprocess.run(command(single, *extra), cwd=REPO, env=env_with(4), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr

    multi = tmp_path / "multi"
    procs = start_pair(multi, *extra, *multi_extra)
    outputs = wait_pair(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    summary = read_summary(multi)
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["devices"] == 4
    ours, theirs = read_metrics(multi), read_metrics(single)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, 17))
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert summary["final_eval_loss"] == pytest.approx(read_summary(single)["final_eval_loss"], rel=1e-5)
    assert "placement on mesh" in (multi / "train.log").read_text()  # the placement table in the run log


# 40 steps on an FSDP mesh spanning both processes; no checkpoint but the preemption's
LONG = ["data.tokens=10240", "checkpoint.every=0", "mesh.data=1", "mesh.fsdp=4"]


def saved(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_after_the_same_step_and_the_relaunch_resumes(tmp_path):
    single = tmp_path / "single"
    proc = subprocess.run(command(single, *LONG), cwd=REPO, env=env_with(4), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr

    multi = tmp_path / "multi"
    t0 = time.time()
    # slower steps, so that the signal lands mid-run
    procs = start_pair(multi, *LONG, env_extra={faults.ENV: "step_delay:0.1"})
    deadline = time.time() + 300
    while len(read_metrics(multi)) < 5 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # process 1 only
    outputs = wait_pair(procs, timeout=300)
    print(f"\npreempted pair: {time.time() - t0:.1f} s", file=sys.stderr)
    assert [p.returncode for p in procs] == [3, 3], outputs[0][-3000:] + outputs[1][-3000:]
    stops = [re.findall(r"SIGTERM on (this|another) process: every process stops after step (\d+)", out)
             for out in outputs]
    assert [s[0][0] for s in stops] == ["another", "this"], stops
    stopped_at = int(stops[0][0][1])
    assert int(stops[1][0][1]) == stopped_at and saved(multi) == [stopped_at] and stopped_at < 40
    assert read_summary(multi)["status"] == "preempted"

    outputs = wait_pair(start_pair(multi, *LONG))
    assert [o for o in outputs if "Traceback" in o] == []
    summary = read_summary(multi)
    assert summary["status"] == "completed" and summary["resumed_from"] == [stopped_at]
    ours, theirs = read_metrics(multi), read_metrics(single)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, 41))
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), a["step"]


STALL_TIMEOUT = 6  # seconds
STALL_MARGIN = 20  # seconds for the watchdog's poll, the stack dumps and the processes' exit


@pytest.mark.slow
def test_a_stall_in_one_process_ends_both_naming_it_and_the_relaunch_resumes(tmp_path):
    every8 = [o for o in LONG if not o.startswith("checkpoint.every")] + ["checkpoint.every=8"]
    single = tmp_path / "single"
    proc = subprocess.run(command(single, *every8), cwd=REPO, env=env_with(4), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr

    multi = tmp_path / "multi"
    procs = start_pair(multi, *every8, f"train.stall_timeout={STALL_TIMEOUT}",
                       env_extra={faults.ENV: "stall_at_step:20@1"})  # process 1 stops after step 20
    deadline = time.time() + 300
    while len(read_metrics(multi)) < 19 and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    stalled_at = time.time()
    outputs = wait_pair(procs, timeout=300)
    ended = time.time() - stalled_at
    assert [p.returncode for p in procs] == [5, 5], outputs[0][-3000:] + outputs[1][-3000:]  # EXIT_STALLED
    assert ended < STALL_TIMEOUT + STALL_MARGIN, f"the stalled pair took {ended:.0f} s to end"
    summary = read_summary(multi)
    assert summary["status"] == "failed" and summary["error"]["stalled"], summary.get("error")
    assert re.search(r"no progress for \d+ s .* in phase '(train step|checkpoint save)' (after|at) step \d+",
                     summary["error"]["message"]), summary["error"]["message"]
    log = (multi / "train.log").read_text()
    assert "==== process 0: stalled" in log and "==== process 1: stalled" in log  # both processes' stacks
    assert "in at_step" in log  # process 1's stuck thread, where the fault holds it

    outputs = wait_pair(start_pair(multi, *every8, f"train.stall_timeout={STALL_TIMEOUT}"))
    assert [o for o in outputs if "Traceback" in o] == []
    summary = read_summary(multi)
    assert summary["status"] == "completed" and summary["resumed_from"] == [16]
    ours, theirs = read_metrics(multi), read_metrics(single)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, 41))
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5), a["step"]
