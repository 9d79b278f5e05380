"""The XLA flags scalelab sets before JAX starts: added once, never over the user's own."""

import os

import pytest

from scalelab.runtime import xla_env


@pytest.fixture
def environ(monkeypatch):
    for name in ("XLA_FLAGS", "SCALELAB_XLA_DEFAULTS", "SCALELAB_HOST_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_added_once(environ):
    xla_env.prepare()
    xla_env.prepare()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_the_users_flags_win_and_defaults_can_be_turned_off(environ):
    environ.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot,reduce")
    environ.setenv("SCALELAB_HOST_DEVICES", "2")
    xla_env.prepare()
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce "
                                       "--xla_force_host_platform_device_count=2")
    environ.setenv("XLA_FLAGS", "")
    environ.setenv("SCALELAB_XLA_DEFAULTS", "0")
    environ.delenv("SCALELAB_HOST_DEVICES")
    xla_env.prepare()
    assert os.environ["XLA_FLAGS"] == ""
