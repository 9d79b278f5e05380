"""Console entry points. They set XLA flags (`xla_env`) before JAX starts, then hand over."""

from __future__ import annotations


def train() -> None:
    from scalelab.runtime import xla_env

    xla_env.prepare()
    from scalelab.cli.train import main

    main()


def cli() -> None:
    from scalelab.runtime import xla_env

    xla_env.prepare()
    from scalelab.cli.main import main

    raise SystemExit(main())
