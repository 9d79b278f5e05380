"""One training run, start to finish: build it, take the run directory's lock, choose the start,
run the loop, and write the summary whatever happens (completed, preempted, diverged, failed).

A run that fails before its first step (a bad config or data path, a checkpoint that cannot be
forked or restored) is a failed start. A build failure writes nothing; one after the run directory
is locked records `status: failed` with the error in its summary (what a sweep's status reports)
and leaves no empty `checkpoints/` behind. `Attempt` tells the caller how far it got, so that the
command line can remove a new run's directory after a failed start.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass

import jax
from omegaconf import DictConfig

from scalelab.config import ConfigError, check_keys
from scalelab.data import pipeline
from scalelab.runfiles import TRAIN_LOG
from scalelab.runtime import distributed, watchdog
from scalelab.train import placement, trackers
from scalelab.train.build import Run, build_run
from scalelab.train.checkpoint import Checkpointer, checkpoint_dir
from scalelab.train.loop import Diverged, train_loop
from scalelab.train.mirror import RunMirror, locate
from scalelab.train.preemption import PreemptionGuard
from scalelab.train.rundir import RunLock, previous_state, truncate_metrics
from scalelab.train.runlog import RunLog, read_summary, write_summary
from scalelab.train.start import initial_state
from scalelab.train.summary import base_summary
from scalelab.train.trackers import Trackers

log = logging.getLogger("scalelab")


@dataclass
class Attempt:
    """How far one call of `run` got."""

    new: bool = False  # the run directory held no run before this attempt
    started: bool = False  # the run chose its start and entered the loop: later failures are the run's


def run(cfg: DictConfig, run_dir, attempt: Attempt | None = None) -> dict:
    """Train one run into `run_dir` (a directory, a URL, or a URL's mirror: train/mirror.py) and
    return its summary (callable without Hydra)."""
    attempt = attempt if attempt is not None else Attempt()
    check_keys(cfg)  # before anything runs: a stray key would otherwise train silently
    distributed.initialize(cfg.distributed)
    if jax.config.jax_compilation_cache_dir:  # e.g. JAX_COMPILATION_CACHE_DIR, set per sweep
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    local, url = locate(run_dir)
    if url and jax.process_count() > 1:
        raise ConfigError("hydra.run.dir", f"{url}: a run directory in an object store is for one-process "
                          "runs; a multi-process run needs a shared filesystem")
    built = build(cfg, local)
    mirror = RunMirror(url, built.run_dir) if url and built.is_main else None
    with RunLock(built.run_dir, enabled=built.is_main):
        if mirror:
            mirror.pull()
        previous = previous_state(built.run_dir, built.config)
        if previous == "completed":
            log.info("%s already completed with this config; nothing to do", url or built.run_dir)
            return read_summary(built.run_dir)
        attempt.new = previous == "new"
        return fit(built, resuming=previous == "resume", attempt=attempt, mirror=mirror)


def build(cfg: DictConfig, run_dir) -> Run:
    """The built run, with errors that name the config key at fault."""
    try:
        built = build_run(cfg, run_dir)
    except FileNotFoundError as exc:  # a prepared dataset is the only file a build reads
        if cfg.data.source != "prepared":
            raise
        raise ConfigError("data.path", str(exc)) from exc
    sharding = built.steps.batch_sharding
    pipeline.check_batch_layout(sharding.addressable_devices_indices_map((cfg.train.batch_size, 1)),
                                cfg.train.batch_size, jax.process_index(), jax.process_count(),
                                dict(built.mesh.shape))
    return built


def fit(run: Run, resuming: bool, attempt: Attempt | None = None, mirror: RunMirror | None = None) -> dict:
    """Run the loop inside the error handling that always leaves a truthful summary.json (uploaded
    by `mirror`, if any, with each complete checkpoint and at the end)."""
    attempt = attempt if attempt is not None else Attempt()
    summary = base_summary(run)
    if resuming:
        summary["resumed_from"] = (read_summary(run.run_dir) or {}).get("resumed_from", [])
    if run.is_main:
        log.info("%s", placement.table(run.fns, run.steps, run.mesh))
        log.info("attention %s, %d microbatch(es) per step", run.fns.spec.attention, run.grad_accum)
    c = run.cfg.checkpoint
    ckpt = Checkpointer(run.run_dir, keep=c.keep, async_save=c.async_save, steps=c.steps,
                        on_complete=mirror.push if mirror else None)
    started = time.time()
    dog = watchdog.Watchdog(run.cfg.train.stall_timeout, run.run_dir / TRAIN_LOG, process=jax.process_index(),
                            on_stall=lambda message: stalled(run, summary, started, message))
    with dog:
        return _fit(run, resuming, attempt, mirror, summary, ckpt, started, dog)


def _fit(run: Run, resuming: bool, attempt: Attempt, mirror, summary: dict, ckpt: Checkpointer, started: float,
         dog) -> dict:
    runlog = None
    try:
        dog.beat("start (init or restore)", 0)
        state, data_state, start_step = initial_state(run, ckpt)
    except BaseException as exc:
        failed(run, summary, runlog, ckpt, started, exc, mirror)
        if not resuming and run.is_main:
            try:
                checkpoint_dir(run.run_dir).rmdir()  # the new run's own, still empty (never a checkpoint)
            except OSError:
                pass
        raise
    attempt.started = True
    try:
        runlog = open_log(run, summary, start_step)
        if mirror:
            mirror.push()  # the store's summary says running, its metrics end at the resume step
        with PreemptionGuard() as guard:
            summary.update(train_loop(run, state, data_state, start_step, ckpt, runlog, summary, guard, dog))
            summary["status"] = "preempted" if guard.requested else "completed"
            if guard.requested:
                dog.beat("finish (the last checkpoint)", summary.get("steps_done") or 0)
                finish(run, summary, runlog, ckpt, started, mirror)
                guard.hand_over()
    except Diverged as exc:
        summary.update(status="diverged", diverged_at_step=exc.step, error={"message": str(exc)},
                       last_checkpoint=max(ckpt.steps(), default=None))
        finish(run, summary, runlog, ckpt, started, mirror)
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit) and summary.get("status") == "preempted":
            raise
        failed(run, summary, runlog, ckpt, started, exc, mirror)
        raise
    dog.beat("finish (the last checkpoint)", summary.get("steps_done") or 0)
    finish(run, summary, runlog, ckpt, started, mirror)
    return summary


def stalled(run: Run, summary: dict, started: float, message: str) -> None:
    """The watchdog's record of a run that stopped making progress (its thread; the process ends next)."""
    summary.update(status="failed", error={"message": message, "stalled": True},
                   wall_seconds=round(time.time() - started, 3))
    if run.is_main:
        write_summary(run.run_dir, summary)


def failed(run: Run, summary: dict, runlog, ckpt: Checkpointer, started: float, exc: BaseException,
           mirror: RunMirror | None = None) -> None:
    summary["status"] = "failed"
    summary["error"] = {"message": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    finish(run, summary, runlog, ckpt, started, mirror)


def open_log(run: Run, summary: dict, start_step: int) -> RunLog:
    """The run's log files, with rows an interrupted attempt logged after its checkpoint dropped."""
    if start_step:
        summary["resumed_from"].append(start_step)
    opened = None
    if run.is_main:
        opened = Trackers(run.cfg.logger, run.run_dir, run.config, trackers.last_logged_step(run.run_dir))
        dropped = truncate_metrics(run.run_dir, start_step)
        if start_step or dropped:
            log.info("resuming from step %d (dropped %d metrics rows logged after it)", start_step, dropped)
    runlog = RunLog(run.run_dir, enabled=run.is_main, trackers=opened)
    runlog.summary(summary)
    return runlog


def finish(run: Run, summary: dict, runlog: RunLog | None, ckpt: Checkpointer, started: float,
           mirror: RunMirror | None = None) -> None:
    """Wait for the last checkpoint, then write the final summary (and upload the run's files)."""
    try:
        ckpt.close()
    except Exception as exc:  # noqa: BLE001 - keep the summary even if the last save failed
        summary.setdefault("error", {"message": f"checkpoint close failed: {exc}"})
    summary["wall_seconds"] = round(time.time() - started, 3)
    wrote = True
    try:  # on a full disk these fail too: the error that ended the run is the one to report
        runlog = runlog or RunLog(run.run_dir, enabled=run.is_main)
        runlog.summary(summary)
    except OSError as exc:
        log.error("could not write %s's summary.json: %s", run.run_dir, exc)
        wrote = False
    try:
        if runlog is not None:
            runlog.close()
    except OSError as exc:
        log.error("could not close %s's metrics and trackers: %s", run.run_dir, exc)
    if mirror and wrote:
        mirror.push()
