"""Console entry points. They set host-device flags before JAX is imported, then hand over."""

from __future__ import annotations


def train() -> None:
    from scalelab.mesh import set_host_device_count

    set_host_device_count()
    from scalelab.train import main

    main()


def cli() -> None:
    from scalelab.mesh import set_host_device_count

    set_host_device_count()
    from scalelab.cli import main

    raise SystemExit(main())
