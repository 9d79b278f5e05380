"""Shared fixtures: 8 CPU devices, the console scripts' XLA flags, and one short finished run."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("SCALELAB_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache"))

from scalelab.runtime import xla_env  # noqa: E402

xla_env.set_cpu_defaults()  # the same XLA flags as the console entry points

import pytest  # noqa: E402

from tests.helpers import TINY, compose_config  # noqa: E402


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished tiny training run, shared by the tests that only read its files."""
    from scalelab.train.run import run

    run_dir = tmp_path_factory.mktemp("tiny_run")
    summary = run(compose_config(TINY + ["train.eval_every=4"]), run_dir)
    return run_dir, summary
