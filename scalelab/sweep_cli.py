"""`scalelab status SWEEP_DIR`: the grid of a sweep, each cell's status and final loss, what is missing.

Rows are models, columns the IsoFLOP budget (or `data.tokens` for a plain grid); any other override
that varies between jobs (a seed, say) is added to the row label. Planned jobs come from the
sweep's `plan.json` (IsoFLOP sweeper) or `multirun.yaml` (basic sweeper); run directories found in
the sweep directory but not planned are listed too. Failed cells show the first line of their error.
"""

from __future__ import annotations

import json


def main(args) -> int:
    from scalelab.sweep import format_status, sweep_status

    status = sweep_status(args.sweep_dir)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(format_status(status))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("status", help="the grid of a sweep directory: status and final loss per job",
                              description=__doc__)
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep's hydra.sweep.dir")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of the table")
    p.set_defaults(func=main)
