"""A preemption signal to a packed IsoFLOP sweep: every running member saves, the sweep exits with
the trainer's preempted code (not the failed-jobs code), and the same command resumes them all."""

import os
import signal
import subprocess
import time

import pytest

from scalelab.train.preemption import EXIT_PREEMPTED
from scalelab.train.runlog import read_summary
from tests.helpers import REPO


def sweep_command(sweep_dir):
    return [str(REPO / ".venv/bin/scalelab-train"), "--config-dir", "experiments/quickstart", "--config-name", "study",
            "-m", f"hydra.sweep.dir={sweep_dir}", "hydra.sweeper.budgets=[3e10]", "hydra.sweeper.models=[d8,d12]",
            "hydra.sweeper.params={train.seed:0}"]


@pytest.mark.slow
def test_sigterm_to_a_packed_isoflop_sweep_exits_preempted_and_the_relaunch_resumes(tmp_path):
    env = {**os.environ, "SCALELAB_HOST_DEVICES": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    log = tmp_path / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(sweep_command(tmp_path / "iso"), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline and log.read_text().count("in one program") < 2:
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == EXIT_PREEMPTED, log.read_text()[-2000:]
    assert "preempted: the running jobs saved their checkpoints" in log.read_text()
    runs = sorted((tmp_path / "iso").glob("budget=*"))
    assert len(runs) == 2 and {read_summary(d)["status"] for d in runs} == {"preempted"}

    done = subprocess.run(sweep_command(tmp_path / "iso"), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for d in runs:
        summary = read_summary(d)
        assert summary["status"] == "completed" and summary["resumed_from"], d.name
