"""Two JAX processes on loopback train the same run as one process with the same devices."""

import os
import socket
import subprocess
import sys

import pytest

from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import REPO, TINY

OVERRIDES = TINY + ["data.tokens=4096", "checkpoint.every=8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_dir, *extra):
    return [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
            *OVERRIDES, *extra]


def env_with(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
    single = tmp_path / "single"
    proc = subprocess.run(command(single), cwd=REPO, env=env_with(4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

    multi = tmp_path / "multi"
    port = free_port()
    procs = [subprocess.Popen(command(multi, f"distributed.coordinator=127.0.0.1:{port}",
                                      "distributed.num_processes=2", f"distributed.process_id={i}"),
                              cwd=REPO, env=env_with(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:  # always end both, whatever happened
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    summary = read_summary(multi)
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["devices"] == 4
    ours, theirs = read_metrics(multi), read_metrics(single)
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == list(range(1, 17))
    for a, b in zip(ours, theirs):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert summary["final_eval_loss"] == pytest.approx(read_summary(single)["final_eval_loss"], rel=1e-5)
    assert "placement on mesh" in (multi / "train.log").read_text()  # the placement table in the run log
