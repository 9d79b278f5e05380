"""Console entry points. They set XLA flags (`xla_env`) before JAX starts, then hand over."""

from __future__ import annotations


def train() -> None:
    from scalelab import xla_env

    xla_env.prepare()
    from scalelab.train import main

    main()


def cli() -> None:
    from scalelab import xla_env

    xla_env.prepare()
    from scalelab.cli import main

    raise SystemExit(main())
