"""`scalelab wsd`: several (N, D) points from one warmup-stable run and short cooldown branches.

A warmup-stable-decay (WSD) run holds the peak learning rate after warmup and decays it linearly
over the last `decay` fraction of its steps. Before its decay begins, a WSD run of D tokens is the
same computation as the stable phase of any longer WSD run with the same warmup (in steps) and
seed. So one stable run, checkpointed at the decay start of each branch, serves them all:

    SWEEP/stable/          the stable phase up to the last fork point (role: wsd-stable)
    SWEEP/D=<tokens>/      one branch per multiplier x reference D: forks from the stable run at
                           step (1 - decay) * steps(D) and runs only its cooldown

Each branch is a complete run directory with its own summary (tokens = D, flops from the ledger)
and is bitwise the run `scalelab-train schedule=wsd data.tokens=D` would have produced from
scratch; it costs only its cooldown. `scalelab analyze collect SWEEP` skips the stable run.

How the points compare with cosine runs: with a cooldown of about 20% of the steps, WSD runs reach
the final loss of a cosine schedule tuned to the same length (within about a percent in published
comparisons), so branch points can sit on the same scaling curves. They are not independent
samples, though: all branches share the stable run's data and parameters up to their fork, so their
noise is correlated and bootstrap intervals that treat them as independent runs are too narrow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def plan(tokens: float, multipliers: list[float], tokens_per_step: int, decay: float) -> list[dict]:
    """One branch per multiplier: its tokens (whole steps), steps, and fork step."""
    branches = []
    for m in sorted(set(multipliers)):
        steps = int(round(m * tokens / tokens_per_step))
        if steps < 2:
            raise ValueError(f"--multipliers {m}: {m} x {tokens:g} tokens is less than two steps")
        fork = steps - int(round(decay * steps))
        branches.append({"multiplier": m, "tokens": steps * tokens_per_step, "steps": steps, "fork_step": fork})
    return branches


def train_command(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-c", "from scalelab.entry import train; train()", f"hydra.run.dir={run_dir}", *overrides]


def main(args) -> int:
    from hydra import compose, initialize_config_dir

    from scalelab.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={args.model}", *args.overrides])
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    branches = plan(args.tokens, args.multipliers, tokens_per_step, args.decay)
    warmup_steps = max(1, int(round(args.warmup * args.tokens / tokens_per_step)))
    last_fork = max(b["fork_step"] for b in branches)
    if warmup_steps >= min(b["fork_step"] for b in branches):
        raise ValueError(f"warmup of {warmup_steps} steps does not end before the shortest branch forks")
    sweep = Path(args.sweep_dir)
    common = [f"model={args.model}", "schedule=wsd", f"schedule.warmup={warmup_steps}", *args.overrides]
    stable = common + [f"data.tokens={last_fork * tokens_per_step}", "schedule.decay=0", "role=wsd-stable",
                       f"checkpoint.steps=[{','.join(str(b['fork_step']) for b in branches)}]",
                       f"checkpoint.keep={len(branches) + 1}"]
    jobs = [("stable", stable)] + [
        (f"D={b['tokens']}", common + [f"data.tokens={b['tokens']}", f"schedule.decay={args.decay}",
                                       f"fork_from={(sweep / 'stable').resolve()}"])
        for b in branches
    ]
    print(f"WSD branches of {args.model}: warmup {warmup_steps} steps, cooldown {args.decay:.0%} of each branch")
    print(f"  stable run: {last_fork} steps ({last_fork * tokens_per_step:,} tokens), saving at "
          f"{[b['fork_step'] for b in branches]}")
    for b in branches:
        print(f"  branch {b['multiplier']:g}x: D={b['tokens']:,} tokens, forks at step {b['fork_step']}, "
              f"cooldown {b['steps'] - b['fork_step']} steps")
    if args.dry_run:
        for name, overrides in jobs:
            print(" ".join(train_command(sweep / name, overrides)))
        return 0
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "wsd_plan.json").write_text(json.dumps({"model": args.model, "warmup_steps": warmup_steps,
                                                      "decay": args.decay, "branches": branches}, indent=2))
    failed = []
    for name, overrides in jobs:
        code = subprocess.run(train_command(sweep / name, overrides)).returncode
        if code != 0:
            failed.append(name)
            if name == "stable":
                print("the stable run failed; no branch can fork", file=sys.stderr)
                return 1
    if failed:
        print(f"failed branches: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("wsd", help="one warmup-stable run, cooldown branches at several data volumes")
    p.add_argument("--model", required=True, help="a ladder size, e.g. p150k")
    p.add_argument("--tokens", type=float, required=True, help="the reference data volume D")
    p.add_argument("--multipliers", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 1, 2, 4],
                   help="branch lengths as multiples of --tokens (default 0.5,1,2,4)")
    p.add_argument("--decay", type=float, default=0.2, help="cooldown fraction of each branch (default 0.2)")
    p.add_argument("--warmup", type=float, default=0.05, help="warmup as a fraction of the reference D")
    p.add_argument("--sweep-dir", required=True, help="where the stable run and the branches go")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the commands, run nothing")
    p.add_argument("overrides", nargs="*", help="more training overrides, e.g. data.seq_len=128")
    p.set_defaults(func=main)
