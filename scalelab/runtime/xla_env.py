"""XLA flags that must be in the environment before JAX creates its CPU backend.

The console entry points (and the tests' conftest) call `prepare()` before the first JAX
computation. Flags already present in XLA_FLAGS always win; `SCALELAB_XLA_DEFAULTS=0` turns the
defaults off.
"""

from __future__ import annotations

import os
from importlib import metadata

# By default XLA:CPU hands dots, elementwise ops and reductions to YNNPACK; its reductions (the
# softmax backward's row sums) are much slower than XLA's own loops, so only dots go to it
# (figures in NOTES.md).
CPU_DEFAULTS = {"xla_cpu_experimental_ynn_fusion_type": "dot"}
# the jaxlib versions these flags were verified with (an unknown flag aborts the process)
VERIFIED_JAXLIB = ("0.10.",)


def _add_flag(name: str, value) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if f"--{name}" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()


def set_cpu_defaults() -> None:
    if os.environ.get("SCALELAB_XLA_DEFAULTS", "1") == "0":
        return
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return
    if version.startswith(VERIFIED_JAXLIB):
        for name, value in CPU_DEFAULTS.items():
            _add_flag(name, value)


def set_host_device_count() -> None:
    """On a CPU-only host, expose SCALELAB_HOST_DEVICES XLA devices (opt-in; default one).

    Splitting the batch over one device per core can overlap the serial elementwise work of a
    step, but XLA's CPU all-reduce has been seen to deadlock with as many devices as cores (see
    NOTES.md), so it is not the default. XLA_FLAGS wins when it sets a count.
    """
    wanted = os.environ.get("SCALELAB_HOST_DEVICES")
    if wanted:
        _add_flag("xla_force_host_platform_device_count", int(wanted))


def prepare(argv: list[str] | None = None) -> None:
    """Set the defaults before JAX starts. A packed sweep (`hydra/launcher=packed` on the command
    line, or `scalelab bench --sweep`) on a CPU-only host gets one XLA device per core: its members spread over the devices
    with no collective between them, so every core trains its own members."""
    set_cpu_defaults()
    packs = argv and ("hydra/launcher=packed" in argv or argv[:1] == ["bench"] and "--sweep" in argv)
    if packs and not os.environ.get("SCALELAB_HOST_DEVICES"):
        os.environ["SCALELAB_HOST_DEVICES"] = str(os.cpu_count() or 1)
    set_host_device_count()
