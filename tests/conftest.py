"""Shared fixtures: 8 CPU devices, a tiny model config, and one short finished run."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("SCALELAB_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))

from scalelab import xla_env  # noqa: E402

xla_env.set_cpu_defaults()  # the same XLA flags as the console entry points

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from scalelab.train import CONFIG_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# a model small enough to compile in a second or two, and a run of 12 steps
TINY = [
    "model.name=tiny", "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.n_kv_heads=2",
    "model.d_ff=64", "model.lr=0.01",
    "data.seq_len=32", "data.tokens=3072", "train.batch_size=8", "train.log_every=1",
    "train.eval_tokens=512", "train.progress=false",
]


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished tiny training run, shared by the tests that only read its files."""
    from scalelab.train import run

    run_dir = tmp_path_factory.mktemp("tiny_run")
    summary = run(compose_config(TINY + ["train.eval_every=4"]), run_dir)
    return run_dir, summary
