"""Shared test helpers: the repository root, a tiny model's overrides, and config composition."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir

from scalelab.configs import CONFIG_DIR

REPO = Path(__file__).resolve().parent.parent

# a model small enough to compile in a second or two, and a run of 12 steps
TINY = [
    "model.name=tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.d_ff=64", "model.lr=0.01",
    "data.seq_len=32", "data.tokens=3072", "train.batch_size=8", "train.log_every=1",
    "train.eval_tokens=512", "train.progress=false",
]


def jax_cache_env() -> dict:
    """For the environment of a test's training subprocesses: one persistent JAX compilation cache
    (tests/sweep/test_sweep.py's), so that a relaunch of a run, or another run of the same shapes,
    loads its programs instead of compiling them again (the same executables: losses are bitwise equal)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(Path(os.environ["SCALELAB_CACHE"]).resolve() / "jax-test-cache")}


def compose_config(overrides=()):
    """The composed `train` config with these overrides, as `scalelab-train` would build it."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def build_wheel(out: Path) -> Path:
    """The package's wheel, built from a copy of the sources (setuptools writes build/ and
    *.egg-info into the tree it builds, and the checkout is shared)."""
    import shutil
    import subprocess
    import sys

    source = out / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("scalelab", "hydra_plugins"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    (built,) = out.glob("scalelab-*.whl")
    return built


def finish(proc, timeout=300):
    """Wait for a subprocess started with stderr piped (killed if it outlives `timeout`): (returncode, stderr)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return proc.returncode, err
