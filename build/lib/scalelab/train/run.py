"""One training run, start to finish: build it, take the run directory's lock, choose the start,
run the loop, and write the summary whatever happens (completed, preempted, diverged, failed)."""

from __future__ import annotations

import logging
import time
import traceback

import jax
from omegaconf import DictConfig

from scalelab.runtime import distributed
from scalelab.train import placement
from scalelab.train.build import Run, build_run
from scalelab.train.checkpoint import Checkpointer
from scalelab.train.loop import Diverged, train_loop
from scalelab.train.preemption import PreemptionGuard
from scalelab.train.rundir import RunLock, previous_state, truncate_metrics
from scalelab.train.runlog import RunLog, read_summary
from scalelab.train.start import initial_state
from scalelab.train.summary import base_summary

log = logging.getLogger("scalelab")


def run(cfg: DictConfig, run_dir) -> dict:
    """Train one run into `run_dir` and return its summary (callable without Hydra)."""
    distributed.initialize(cfg.distributed)
    if jax.config.jax_compilation_cache_dir:  # e.g. JAX_COMPILATION_CACHE_DIR, set per sweep
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    built = build_run(cfg, run_dir)
    with RunLock(built.run_dir, enabled=built.is_main):
        previous = previous_state(built.run_dir, built.config)
        if previous == "completed":
            log.info("%s already completed with this config; nothing to do", built.run_dir)
            return read_summary(built.run_dir)
        return fit(built, resuming=previous == "resume")


def fit(run: Run, resuming: bool) -> dict:
    """Run the loop inside the error handling that always leaves a truthful summary.json."""
    summary = base_summary(run)
    if resuming:
        summary["resumed_from"] = (read_summary(run.run_dir) or {}).get("resumed_from", [])
    if run.is_main:
        log.info("%s", placement.table(run.fns, run.steps, run.mesh))
        log.info("attention %s, %d microbatch(es) per step", run.fns.spec.attention, run.grad_accum)
    ckpt = Checkpointer(run.run_dir, keep=run.cfg.checkpoint.keep, async_save=run.cfg.checkpoint.async_save)
    runlog, started = None, time.time()
    try:
        state, data_state, start_step = initial_state(run, ckpt)
        runlog = open_log(run, summary, start_step)
        with PreemptionGuard() as guard:
            summary.update(train_loop(run, state, data_state, start_step, ckpt, runlog, summary, guard))
            summary["status"] = "preempted" if guard.requested else "completed"
            if guard.requested:
                finish(run, summary, runlog, ckpt, started)
                guard.hand_over()
    except Diverged as exc:
        summary.update(status="diverged", diverged_at_step=exc.step, error={"message": str(exc)},
                       last_checkpoint=max(ckpt.steps(), default=None))
        finish(run, summary, runlog, ckpt, started)
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit) and summary.get("status") == "preempted":
            raise
        summary["status"] = "failed"
        summary["error"] = {"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        finish(run, summary, runlog, ckpt, started)
        raise
    finish(run, summary, runlog, ckpt, started)
    return summary


def open_log(run: Run, summary: dict, start_step: int) -> RunLog:
    """The run's log files, with rows an interrupted attempt logged after its checkpoint dropped."""
    if start_step:
        summary["resumed_from"].append(start_step)
    if run.is_main:
        dropped = truncate_metrics(run.run_dir, start_step)
        if start_step or dropped:
            log.info("resuming from step %d (dropped %d metrics rows logged after it)", start_step, dropped)
    runlog = RunLog(run.run_dir, enabled=run.is_main)
    runlog.summary(summary)
    return runlog


def finish(run: Run, summary: dict, runlog: RunLog | None, ckpt: Checkpointer, started: float) -> None:
    """Wait for the last checkpoint, then write the final summary."""
    try:
        ckpt.close()
    except Exception as exc:  # noqa: BLE001 - keep the summary even if the last save failed
        summary.setdefault("error", {"message": f"checkpoint close failed: {exc}"})
    summary["wall_seconds"] = round(time.time() - started, 3)
    runlog = runlog or RunLog(run.run_dir, enabled=run.is_main, tensorboard=False)
    runlog.summary(summary)
    runlog.close()
