"""`scalelab status SWEEP_DIR` and `scalelab wsd ...` (its description: `scalelab.sweep.wsd`)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from scalelab.cli import common

STATUS_DESCRIPTION = """The grid of a sweep, each cell's status and final loss, what is missing.

Rows are models, columns the IsoFLOP budget (or `data.tokens` for a plain grid); any other override
that varies between jobs (a seed, say) is added to the row label. Planned jobs come from the
sweep's `plan.json` (IsoFLOP sweeper) or `multirun.yaml` (basic sweeper); run directories found in
the sweep directory but not planned are listed too. Failed cells show the first line of their error.
"""


def main(args) -> int:
    from scalelab.sweep.status import format_status, sweep_status

    status = sweep_status(args.sweep_dir)
    common.write_json(status, args.json)
    if not common.to_stdout(args.json):
        print(format_status(status))
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("status", help="the grid of a sweep directory: status and final loss per job",
                              description=STATUS_DESCRIPTION)
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep's hydra.sweep.dir")
    # `--json` was a flag that printed; bare it still prints, like `--json -`
    common.add_json(p, "the status (every job, its state and loss)", bare_prints=True)
    p.set_defaults(func=main)


def wsd_main(args) -> int:
    from scalelab.sweep import wsd

    step_tokens = wsd.tokens_per_step(args.model, args.overrides)
    branches = wsd.plan(args.tokens, args.multipliers, step_tokens, args.decay)
    warmup_steps = max(1, int(round(args.warmup * args.tokens / step_tokens)))
    if warmup_steps >= min(b["fork_step"] for b in branches):
        raise ValueError(f"warmup of {warmup_steps} steps does not end before the shortest branch forks")
    sweep = Path(args.out)
    jobs = wsd.jobs(args.model, branches, warmup_steps, args.decay, args.overrides, sweep, step_tokens)
    last_fork = max(b["fork_step"] for b in branches)
    print(f"WSD branches of {args.model}: warmup {warmup_steps} steps, cooldown {args.decay:.0%} of each branch")
    print(f"  stable run: {last_fork} steps ({last_fork * step_tokens:,} tokens), saving at "
          f"{[b['fork_step'] for b in branches]}")
    for b in branches:
        print(f"  branch {b['multiplier']:g}x: D={b['tokens']:,} tokens, forks at step {b['fork_step']}, "
              f"cooldown {b['steps'] - b['fork_step']} steps")
    if args.dry_run:
        for name, overrides in jobs:
            print(shlex.join(wsd.train_command(sweep / name, overrides)))
        return 0
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "wsd_plan.json").write_text(json.dumps({"model": args.model, "warmup_steps": warmup_steps,
                                                      "decay": args.decay, "branches": branches}, indent=2))
    failed = wsd.run_jobs(sweep, jobs)
    if failed:
        print(f"failed: {', '.join(failed)}" + (" (no branch can fork)" if "stable" in failed else ""),
              file=sys.stderr)
        return 1
    return 0


def add_wsd_parser(subparsers) -> None:
    p = subparsers.add_parser("wsd", help="one warmup-stable run, cooldown branches at several data volumes",
                              description="Train one warmup-stable run of a model and fork cooldown branches "
                                          "from it at several data volumes: several (N, D) points for the cost "
                                          "of the longest one plus the cooldowns.")
    p.add_argument("--model", required=True, help="a ladder size, e.g. p150k")
    p.add_argument("--tokens", type=float, required=True, help="the reference data volume D")
    p.add_argument("--multipliers", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1, 2, 4],
                   help="branch lengths as multiples of --tokens (default 0.5,1,2,4)")
    p.add_argument("--decay", type=float, default=0.2, help="cooldown fraction of each branch (default 0.2)")
    p.add_argument("--warmup", type=float, default=0.05,
                   help="warmup as a fraction of the reference D (default 0.05)")
    common.add_out(p, "the sweep directory: the stable run and the branches go into it", old=("--sweep-dir",))
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the training commands (ready to paste into a shell), run nothing")
    p.add_argument("overrides", nargs="*", help="more training overrides, e.g. data.seq_len=128")
    p.set_defaults(func=wsd_main)
