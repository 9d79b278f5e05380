"""scripts/device_check.sh, the accelerator check a session runs when it is lent a device, kept
from rotting: its dry run plans every stage, prints its commands and composes each training
command's config (a renamed key fails here), training nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO


def test_the_device_check_dry_run_plans_every_stage_and_its_configs_compose(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(REPO / "scripts" / "device_check.sh"), "--dry-run"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("1. bench", "2. cuDNN attention", "3. 16 packed runs", "4. kill -9", "5. a two-budget packed IsoFLOP"):
        assert f"== {stage}" in r.stdout, stage
    assert "model.attention=cudnn" in r.stdout and "--sweep-runs 16" in r.stdout and "die_at_step:35" in r.stdout
    assert "nothing trained" in r.stdout
    out = Path(env["OUT"])
    assert not any(p.name == "metrics.jsonl" for p in out.rglob("*"))  # nothing trained


def test_the_device_check_dry_run_fails_on_a_config_key_that_does_not_exist(tmp_path):
    script = (REPO / "scripts" / "device_check.sh").read_text().replace("model.attention=$kind", "model.atention=$kind")
    broken = tmp_path / "scripts" / "device_check.sh"
    broken.parent.mkdir()
    broken.write_text(script)
    (tmp_path / "scripts" / "setup.sh").symlink_to(REPO / "scripts" / "setup.sh")
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(broken), "--dry-run"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "atention" in r.stdout + r.stderr
