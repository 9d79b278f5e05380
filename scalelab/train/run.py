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
from dataclasses import dataclass

import jax

from scalelab.config import ConfigError, check_keys
from scalelab.data import pipeline
from scalelab.runtime import distributed
from scalelab.train import placement
from scalelab.train.build import Run, build_run
from scalelab.train.loop import Diverged, train_loop
from scalelab.train.preemption import PreemptionGuard
from scalelab.train.session import Session
from scalelab.train.store import RunMirror, locate

log = logging.getLogger("scalelab")


@dataclass
class Attempt:
    """How far one call of `run` got."""

    new: bool = False  # the run directory held no run before this attempt
    started: bool = False  # the run chose its start and entered the loop: later failures are the run's


def run(cfg, run_dir, attempt: Attempt | None = None) -> dict:
    """Train one run, from its composed config, into `run_dir` (a directory, a URL, or a URL's
    mirror: train/store.py) and return its summary (callable without Hydra)."""
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
    session = Session(built, RunMirror(url, built.run_dir) if url and built.is_main else None)
    if not session.open():
        return session.done
    attempt.new = session.new
    return fit(built, attempt=attempt, session=session)


def build(cfg, run_dir) -> Run:
    """The built run, with errors that name the config key at fault."""
    try:
        built = build_run(cfg, run_dir)
    except FileNotFoundError as exc:  # a prepared dataset is the only file a build reads
        if cfg.data.source != "prepared":
            raise
        raise ConfigError("data.path", str(exc)) from exc
    batch = built.train.batch_size
    pipeline.check_batch_layout(built.steps.batch_sharding.addressable_devices_indices_map((batch, 1)), batch,
                                jax.process_index(), jax.process_count(), dict(built.mesh.shape))
    return built


def fit(run: Run, attempt: Attempt | None = None, session: Session | None = None) -> dict:
    """Start `run`, train it to the end and finish it, always leaving a truthful summary.json.

    `session` is the run's open directory (`run` opens it); without one, `run_dir` is opened here."""
    attempt = attempt if attempt is not None else Attempt()
    if session is None:
        session = Session(run)
        if not session.open():
            return session.done
    if run.is_main:
        log.info("%s", placement.table(run.fns, run.steps, run.mesh))
        log.info("attention %s, %d microbatch(es) per step", run.fns.spec.attention, run.grad_accum)
    with session.watchdog() as dog:
        dog.beat("start (init or restore)", 0)
        state, data_state, start_step = session.start()
        attempt.started = True
        return train(session, state, data_state, start_step, dog)


def train(session: Session, state, data_state, start_step: int, dog) -> dict:
    """The loop between a started session and its end: completed, preempted, diverged or failed."""
    run, summary = session.run, session.summary
    try:
        with PreemptionGuard() as guard:
            summary.update(train_loop(run, state, data_state, start_step, session.ckpt, session.runlog, summary,
                                      guard, dog))
            summary["status"] = "preempted" if guard.requested else "completed"
            if guard.requested:
                dog.beat("finish (the last checkpoint)", summary.get("steps_done") or 0)
                session.close()
                guard.hand_over()
    except Diverged as exc:
        summary.update(status="diverged", diverged_at_step=exc.step, error={"message": str(exc)},
                       last_checkpoint=max(session.ckpt.steps(), default=None))
        session.close()
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit) and summary.get("status") == "preempted":
            raise
        session.fail(exc)
        raise
    dog.beat("finish (the last checkpoint)", summary.get("steps_done") or 0)
    session.close()
    return summary
