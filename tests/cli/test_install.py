"""A built wheel, installed non-editable into a fresh venv, trains from any directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

from tests.helpers import build_wheel


@pytest.mark.slow
def test_a_wheel_installed_into_a_fresh_venv_trains_from_anywhere(tmp_path):
    wheel = build_wheel(tmp_path / "wheels")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies come from this interpreter's site-packages (a path entry: its editable
    # scalelab finder is not activated); scalelab itself only from the wheel
    (env_dir / site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": ""}
    where = subprocess.run([py, "-c", "import scalelab.configs as c; print(c.CONFIG_DIR)"], cwd=work, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(env_dir)), where
    run_dir = tmp_path / "x"
    proc = subprocess.run([env_dir / "bin" / "scalelab-train", "model=p15k", "data.tokens=20000", "data.seq_len=64",
                           "train.batch_size=8", "train.progress=false", f"hydra.run.dir={run_dir}"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    helped = subprocess.run([env_dir / "bin" / "scalelab", "--help"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "analyze" in helped.stdout
