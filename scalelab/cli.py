"""`scalelab <subcommand>`: everything that is not a Hydra training run."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalelab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from scalelab import bench

    bench.add_parser(sub)
    try:
        from scalelab.analysis import cli as analysis_cli
    except ImportError:  # pragma: no cover - the analysis package is optional while it is being built
        analysis_cli = None
    if analysis_cli is not None:
        analyze = sub.add_parser("analyze", help="collect runs, fit scaling laws, compare, report")
        analysis_cli.add_subparsers(analyze.add_subparsers(dest="analyze_command", required=True))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
