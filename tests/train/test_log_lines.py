"""Off a terminal (stderr a pipe, as under SLURM or nohup) a run writes one line per logged step,
with step, loss, tokens/s, MFU and ETA, to stderr and to its train.log."""

import os
import re
import subprocess
import sys

from scalelab.train.progress import Progress
from tests.helpers import REPO, TINY, jax_cache_env

LINE = re.compile(r"step (\d+)/12 loss (\d+\.\d{4}) (?:eval (\d+\.\d{4}) )?([\d,]+) tok/s MFU (\d+\.\d\d)% ETA (\S+)")


def test_log_lines_reach_stderr_and_train_log_at_the_logged_steps(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **jax_cache_env()}
    cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}",
           *TINY, "train.progress=true", "train.log_every=4", "train.eval_every=6"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [m for m in map(LINE.search, proc.stderr.splitlines()) if m]
    assert [int(m[1]) for m in lines] == [4, 6, 8, 12]  # every 4 steps, the evaluation at 6, the last step
    assert [m[3] is not None for m in lines] == [False, True, False, True]
    assert lines[-1][6] == "0:00:00" and all(float(m[5]) > 0 for m in lines)
    in_log = [m.group(0) for m in map(LINE.search, (run_dir / "train.log").read_text().splitlines()) if m]
    assert in_log == [m.group(0) for m in lines]  # once each: not repeated by Hydra's own handlers
    assert "scalelab.progress" in (run_dir / "train.log").read_text()


def test_on_a_terminal_the_bar_stays(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    progress = Progress(12, enabled=True)
    assert progress.enabled and not progress.lines
    assert not Progress(12, enabled=False).lines


def test_the_eta_comes_from_the_steps_since_the_first_line():
    p = Progress(100, enabled=False)
    row = {"train_loss": 3.0, "tokens": 2560, "tokens_per_second": 256.0, "mfu": 0.0123}
    assert p.line(10, row, now=1000.0).endswith("256 tok/s MFU 1.23% ETA 0:01:30")  # its own 1 step/s
    assert p.line(20, {**row, "tokens": 5120}, now=1005.0).endswith("ETA 0:00:40")  # 2 steps/s since the first
