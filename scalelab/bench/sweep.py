"""The sweep benchmark: one small grid (learning rates x seeds of one model) trained three ways in
one invocation, compared by wall time and by effective model FLOP/s over the measured peak:

* packed:      `hydra/launcher=packed`, the grid as one vmapped program in this process;
* in-process:  one run after another in this process (Hydra's basic launcher does this);
* processes:   one `scalelab-train` process per run, one after another (what the `local`
               submitit launcher does: every run pays its interpreter start, imports and compile).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID_LRS = (1e-3, 3e-3, 1e-2, 3e-2)


def grid(model: str, steps: int, seq_len: int = 64, batch_size: int = 8, runs: int = 8,
         precision: str = "fp32") -> list[list[str]]:
    """`runs` runs (a multiple of 4): the 4 learning rates x runs/4 seeds."""
    base = [f"model={model}", f"data.seq_len={seq_len}", f"train.batch_size={batch_size}",
            f"data.tokens={steps * seq_len * batch_size}", "train.progress=false", "train.eval_tokens=8192",
            "train.log_every=50", f"train.precision={precision}"]
    seeds = range(max(1, runs // len(GRID_LRS)))
    return [base + [f"optimizer.lr={lr}", f"train.seed={seed}"] for lr in GRID_LRS for seed in seeds]


def _compose(overrides):
    from scalelab.config import compose_train

    return compose_train(overrides)


def run_packed(jobs: list[list[str]], root: Path) -> float:
    from scalelab.sweep.packed import Job, run_jobs

    t0 = time.perf_counter()
    done = run_jobs([Job(cfg=_compose(o), run_dir=root / f"packed{i}") for i, o in enumerate(jobs)])
    seconds = time.perf_counter() - t0
    failed = [j.run_dir.name for j in done if j.error is not None]
    if failed:
        raise RuntimeError(f"packed bench runs failed: {failed}")
    return seconds


def run_in_process(jobs: list[list[str]], root: Path) -> float:
    import jax

    from scalelab.train.build import build_run
    from scalelab.train.run import fit

    t0 = time.perf_counter()
    for i, overrides in enumerate(jobs):
        fit(build_run(_compose(overrides), root / f"solo{i}", jax.local_devices()[:1]))
    return time.perf_counter() - t0


def run_processes(jobs: list[list[str]], root: Path) -> float:
    t0 = time.perf_counter()
    for i, overrides in enumerate(jobs):
        cmd = [sys.executable, "-c", "from scalelab.cli.entry import train; train()",
               f"hydra.run.dir={root / f'proc{i}'}", *overrides]
        subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def warm_up(overrides: list[str], root: Path) -> None:
    """Pay this process's one-time costs before any way is timed, so that none of them lands on
    whichever way runs first: Hydra's first compose, the corpus, the backend, the trackers' imports
    (TensorBoard's pulls in torch where it is installed: seconds)."""
    import importlib

    from scalelab.train import trackers
    from scalelab.train.build import build_run

    cfg = _compose(overrides)
    build_run(cfg, root / "warm-up")  # builds, touches no file and compiles nothing
    for name in trackers.selected(cfg.logger):
        importlib.import_module(f"{trackers.__name__}.{trackers.KINDS[name].module}")


def fresh_compilation() -> None:
    """Forget every compiled program of this process, so that each way pays its own compilations as
    a new sweep would (the in-process way would otherwise reuse the packed way's eval step)."""
    import jax

    from scalelab.train import step

    for cached in (step.build_steps, step.build_packed_chunk_step, step.build_member_parallel_step):
        cached.cache_clear()
    jax.clear_caches()


def timed(way, jobs, root: Path) -> float:
    fresh_compilation()
    return way(jobs, root)


WAYS = ("packed", "in-process", "processes")


def bench_sweep(model: str = "p15k", steps: int = 300, runs: int = 8, ways=WAYS, precision: str = "fp32") -> dict:
    """Wall times of the `ways` (packed first), their ratios, and the effective MFU of each."""
    from scalelab import ledger
    from scalelab.model import ladder
    from scalelab.runtime import hardware

    if "packed" not in ways or any(w not in WAYS for w in ways):
        raise ValueError(f"the sweep bench's ways are {', '.join(WAYS)}, packed among them; got {list(ways)}")
    jobs = grid(model, steps, runs=runs, precision=precision)
    r = ladder.rung(model)
    shape = ledger.Shape(d_model=r["d_model"], n_layers=r["n_layers"], n_heads=r["n_heads"],
                         n_kv_heads=r["n_kv_heads"], d_ff=r["d_ff"], vocab=264, seq_len=64)
    flops = len(jobs) * steps * 64 * 8 * ledger.flops_per_token(shape)
    peak_before = hardware.measured_matmul_peak(precision)
    run_way = {"packed": lambda: timed(run_packed, jobs, root), "in-process": lambda: timed(run_in_process, jobs, root),
               "processes": lambda: run_processes(jobs, root)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm_up(jobs[0], root)
        seconds = {way: run_way[way]() for way in WAYS if way in ways}
    peak = max(peak_before, hardware.measured_matmul_peak(precision))
    return {"model": model, "members": len(jobs), "steps": steps, "flops": flops, "peak_flops": peak,
            "precision": precision,
            "seconds": seconds, "speedup": {k: v / seconds["packed"] for k, v in seconds.items()},
            "mfu": {k: flops / v / peak for k, v in seconds.items()}}


def format_sweep(result: dict) -> str:
    lines = [f"sweep bench: {result['members']} runs of {result['model']} x {result['steps']} steps "
             f"(4 learning rates x {result['members'] // 4} seeds, seq 64, batch 8, {result.get('precision', 'fp32')}); "
             f"peak {result['peak_flops'] / 1e9:.0f} GFLOP/s"]
    for way, seconds in result["seconds"].items():
        lines.append(f"  {way:<11} {seconds:7.1f} s   {result['speedup'][way]:5.2f}x the packed time   "
                     f"effective MFU {result['mfu'][way]:.1%}")
    return "\n".join(lines)
