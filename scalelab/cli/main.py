"""`scalelab <subcommand>`: everything that is not a Hydra training run.

  scalelab data prepare INPUT... -o DIR        prepare a dataset (text files, JSONL, Parquet)
  scalelab eval RUN_OR_CHECKPOINT              loss, perplexity, bits per byte
  scalelab generate RUN_OR_CHECKPOINT --prompt TEXT
  scalelab status SWEEP_DIR                    a sweep's grid of runs and their states
  scalelab wsd --model M --tokens D -o DIR     WSD cooldown branches from one stable run
  scalelab analyze collect|fit|compare|report|lr-law  scaling-law analysis
  scalelab bench                               training-step speed against this machine's peak
  scalelab export hf RUN_OR_CHECKPOINT -o DIR  a Hugging Face (Llama) model directory
  scalelab mup coord-check [-o DIR]            activation size against width, standard vs mup

Output paths are always -o/--out; --json PATH writes a command's result as JSON (--json - prints
it instead). `scalelab COMMAND --help` describes each command. Training runs and sweeps are
`scalelab-train` (Hydra): `scalelab-train --help`.
"""

from __future__ import annotations

import argparse
import sys

# each of these modules imports only the standard library at the top (JAX, pandas and the rest
# load inside the commands), so that `scalelab --help` takes a fraction of a second
from scalelab.cli import analyze as analysis_cli
from scalelab.cli import bench, common, export, mup
from scalelab.cli import sweep as sweep_cli
from scalelab.cli import workflow as workflow_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalelab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    workflow_cli.add_parsers(sub)
    sweep_cli.add_parser(sub)
    analyze = sub.add_parser("analyze", help="collect runs, fit scaling laws, compare, report")
    analysis_cli.add_subparsers(analyze.add_subparsers(dest="analyze_command", required=True))
    sweep_cli.add_wsd_parser(sub)
    bench.add_parser(sub)
    export.add_parser(sub)
    mup.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
