"""The built wheel installs with its dependencies from PyPI and trains on every supported Python.

For each of Python 3.11, 3.12 and 3.13 found on this machine (missing ones are skipped), a fresh
venv gets the wheel and everything it depends on from PyPI, then `scalelab --help`, `--version` and
one tiny training run are checked from another working directory.

The venvs are made with uv (the dev extra), which downloads in parallel into its own cache
(~/.cache/uv): a venv with the wheel's ~60 dependencies (jax, jaxlib, scipy, pyarrow, ...; about
1.2 GB installed) takes about 6 s where pip took 50-100 s. They are kept under
`$SCALELAB_CACHE/pyvenvs/` (the repository's `.cache/`, ignored by git), keyed by the Python version
and the wheel's dependency list, so a rerun only reinstalls scalelab itself before the checks. Then
each Python's checks and its 8-step training run take 10-20 s.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.helpers import REPO, build_wheel

PYTHONS = ("3.11", "3.12", "3.13")
CACHE = Path(os.environ.get("SCALELAB_CACHE", REPO / ".cache")) / "pyvenvs"
TRAIN = ["model=p15k", "data.tokens=4096", "data.seq_len=64", "train.batch_size=8", "train.progress=false"]


def _log(message: str) -> None:
    print(f"[python-versions] {message}", file=sys.stderr, flush=True)


def _minor_version(python: str) -> str | None:
    """'3.12' for a working interpreter; None for a pyenv shim of a version that is not selected."""
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def find_python(version: str) -> str | None:
    """python3.X on PATH, else pyenv's newest 3.X (its shims only answer for the selected versions)."""
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    installed = sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"),
                       key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    for candidate in [shutil.which(f"python{version}"), *reversed(installed)]:
        if candidate and _minor_version(candidate) == version:
            return candidate
    return None


def wheel_requirements(wheel: Path) -> list[str]:
    """The wheel's base dependencies (Requires-Dist lines without an extra)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    lines = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    return sorted(line for line in lines if "extra ==" not in line)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _uv(*args: str, timeout: int) -> None:
    """uv (the dev extra's; parallel downloads and a shared cache, so a venv takes seconds)."""
    uv = Path(sys.executable).parent / "uv"
    proc = subprocess.run([str(uv if uv.exists() else "uv"), *args, "--quiet"], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def venv_with(python: str, wheel: Path) -> Path:
    """A venv with the wheel's dependencies (made once per Python and dependency list) and this wheel."""
    full = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256("\n".join([full, *wheel_requirements(wheel)]).encode()).hexdigest()[:12]
    env_dir = CACHE / f"py{full}-{key}"
    env_python = str(env_dir / "bin" / "python")
    ready = env_dir / ".dependencies-installed"
    if not ready.exists():
        # a venv left half-made by an interrupted run is started again
        shutil.rmtree(env_dir, ignore_errors=True)
        t0 = time.time()
        _uv("venv", "--python", python, str(env_dir), timeout=300)
        _uv("pip", "install", "--python", env_python, str(wheel), timeout=1800)
        ready.write_text(full + "\n")
        _log(f"Python {full}: venv and dependencies from PyPI in {time.time() - t0:.0f} s")
    t0 = time.time()
    _uv("pip", "install", "--python", env_python, "--no-deps", "--reinstall", str(wheel), timeout=300)
    _log(f"Python {full}: this wheel reinstalled in {time.time() - t0:.1f} s")
    return env_dir


def _run(command, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("version", PYTHONS)
def test_the_wheel_installs_and_trains_on_python(version, wheel, tmp_path):
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    env_dir = venv_with(python, wheel)
    bin_dir = env_dir / "bin"
    work = tmp_path / "elsewhere"
    work.mkdir()
    helped = _run([bin_dir / "scalelab", "--help"], work, timeout=120)
    assert helped.returncode == 0 and "analyze" in helped.stdout, helped.stderr[-2000:]
    expected = wheel.name.split("-")[1]
    for command in ("scalelab", "scalelab-train"):
        shown = _run([bin_dir / command, "--version"], work, timeout=120)
        assert shown.returncode == 0 and expected in shown.stdout, (shown.stdout, shown.stderr[-2000:])
    run_dir = tmp_path / "run"
    t0 = time.time()
    trained = _run([bin_dir / "scalelab-train", *TRAIN, f"hydra.run.dir={run_dir}"], work, timeout=900)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    _log(f"Python {version}: the tiny training run took {time.time() - t0:.0f} s")
