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
    return [sys.executable, "-c", "from scalelab.cli.entry import train; train()", f"hydra.run.dir={run_dir}", *overrides]


def tokens_per_step(model: str, overrides: list[str]) -> int:
    """`train.batch_size x data.seq_len` of the composed training config."""
    from hydra import compose, initialize_config_dir

    from scalelab.configs import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", *overrides])
    return cfg.train.batch_size * cfg.data.seq_len


def jobs(model: str, branches: list[dict], warmup_steps: int, decay: float, overrides: list[str],
         sweep: Path, step_tokens: int) -> list[tuple[str, list[str]]]:
    """(run name, overrides) of the stable run, then of each branch."""
    last_fork = max(b["fork_step"] for b in branches)
    common = [f"model={model}", "schedule=wsd", f"schedule.warmup={warmup_steps}", *overrides]
    stable = common + [f"data.tokens={last_fork * step_tokens}", "schedule.decay=0", "role=wsd-stable",
                       f"checkpoint.steps=[{','.join(str(b['fork_step']) for b in branches)}]",
                       f"checkpoint.keep={len(branches) + 1}"]
    return [("stable", stable)] + [
        (f"D={b['tokens']}", common + [f"data.tokens={b['tokens']}", f"schedule.decay={decay}",
                                       f"fork_from={(sweep / 'stable').resolve()}"])
        for b in branches
    ]


def run_jobs(sweep: Path, planned: list[tuple[str, list[str]]]) -> list[str]:
    """Run the stable run, then the branches, one process each; the names that failed."""
    failed = []
    for name, overrides in planned:
        if subprocess.run(train_command(sweep / name, overrides)).returncode != 0:
            failed.append(name)
            if name == "stable":
                break  # no branch can fork
    return failed
