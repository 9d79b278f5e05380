"""scripts/setup.sh installs what it is asked for, once: its stamp records the extras installed.

pip is replaced by a stub that logs its arguments, so this checks the script's decisions (when to
install, with which extras) in a second, without a network or a real install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

STUB = """#!/usr/bin/env bash
# .venv/bin/python for the test: pip only logs; 'import scalelab' works once something was installed
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "${@:3}" >> "$PIP_LOG"; exit 0; fi
if [ "$1" = "-c" ]; then case "$2" in *"import scalelab"*) [ -s "$PIP_LOG" ]; exit $?;; esac; fi
exec {python} "$@"
"""


@pytest.fixture
def checkout(tmp_path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(STUB.replace("{python}", sys.executable))
    (venv_bin / "python").chmod(0o755)
    return root


def _setup(root: Path, *args: str) -> list[str]:
    """Run setup.sh; return the `pip install -e` lines it ran this time."""
    log = root / "pip.log"
    before = log.read_text().splitlines() if log.exists() else []
    proc = subprocess.run(["bash", str(root / "scripts" / "setup.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PIP_LOG": str(log)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines[len(before):] if " -e " in f" {line} "]


def test_base_then_dev_upgrades_and_dev_stays_dev(checkout):
    assert _setup(checkout) == ["install -q -e ."]
    assert (checkout / ".venv" / ".scalelab-installed").read_text().split()[1] == "-"
    assert _setup(checkout) == []                                # nothing changed: no pip
    assert _setup(checkout, "dev") == ["install -q -e .[dev]"]   # a base venv asked for dev upgrades
    assert _setup(checkout, "dev") == []
    assert _setup(checkout) == []                                # a dev venv serves the base request
    with (checkout / "pyproject.toml").open("a") as handle:
        handle.write("\n# changed\n")
    assert _setup(checkout) == ["install -q -e .[dev]"]          # reinstalled, and still with dev


def test_an_unknown_extra_is_refused(checkout):
    proc = subprocess.run(["bash", str(checkout / "scripts" / "setup.sh"), "devv"], capture_output=True, text=True,
                          env={**os.environ, "PIP_LOG": str(checkout / "pip.log")}, timeout=60)
    assert proc.returncode == 2 and "no extra 'devv'" in proc.stderr and "dev" in proc.stderr
