"""Console entry points. They set XLA flags (`xla_env`) before JAX starts, then hand over."""

from __future__ import annotations


def train() -> None:
    import sys

    # Hydra's own --version names Hydra's version, and Hydra starts (composing the config) first
    if "--version" in sys.argv[1:]:
        from scalelab.cli.common import version_text

        print(version_text("scalelab-train"))
        return
    from scalelab.runtime import xla_env

    xla_env.prepare(sys.argv[1:])
    from scalelab.cli.train import main, mirror_run_dirs

    sys.argv[1:] = mirror_run_dirs(sys.argv[1:])
    main()


def cli() -> None:
    import sys

    from scalelab.runtime import xla_env

    xla_env.prepare(sys.argv[1:])
    from scalelab.cli.main import main

    raise SystemExit(main())
