"""One run's life in its run directory, the same for a solo run and a member of a packed group:
open it (lock, what the directory holds, the summary, the checkpoints), start (`start.py`: resume,
fork, fine-tune or fresh; the log files), and end it (the final evaluation, the summary, the last
checkpoint, the object-store mirror), whatever happens: completed, preempted, diverged, failed.

What differs between the two is only the loop that trains in between: `loop.py` for one run,
`packed.py` for the members of a group along a leading member axis.
"""

from __future__ import annotations

import logging
import time
import traceback

import jax

from scalelab import ledger
from scalelab.runfiles import TRAIN_LOG
from scalelab.runtime import watchdog
from scalelab.runtime.distributed import scheduler_job
from scalelab.train import trackers
from scalelab.train.build import Run
from scalelab.train.checkpoint import Checkpointer, checkpoint_dir
from scalelab.train.runlog import RunLog, read_summary, versions, write_summary
from scalelab.train.start import initial_state
from scalelab.train.store import RunLock, RunMirror, previous_state, truncate_metrics
from scalelab.train.trackers import Trackers

log = logging.getLogger("scalelab")


def data_record(run: Run) -> dict:
    store = run.store
    tokenizer = store.tokenizer
    return {"source": run.data.source, "path": store.url or str(store.path.resolve()),
            "tokenizer": tokenizer.to_dict() if tokenizer.kind == "byte"
            else {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
            "train_tokens": store.tokens("train"), "val_tokens": store.tokens("val"),
            "bytes_per_token": store.bytes_per_token("val"), "sha256": store.manifest.get("sha256")}


def base_summary(run: Run) -> dict:
    """`summary.json` as written when the run starts (`status: running`)."""
    counts, origin = run.counts, run.origin
    return {
        "status": "running",
        "model": origin.model_name,
        "params": counts.params,
        "params_total": counts.params_total,
        "params_active": counts.params_active,
        "experts": counts.experts,
        "top_k": counts.top_k,
        "tokens": run.tokens,
        "flops": counts.flops_per_token * run.tokens,
        "flops_per_token": counts.flops_per_token,
        "flops_convention": ledger.CONVENTION,
        "budget": origin.budget,
        "lr": float(run.hyper.schedule.peak),  # the peak lr used (from optimizer.lr_law when set)
        "lr_law": origin.lr_law,
        "steps": run.plan.steps,
        "tokens_per_step": run.plan.tokens_per_step,
        "epochs": round(run.plan.epochs, 4),
        "repeats_data": run.plan.repeats_data,
        "data": data_record(run),
        "mesh": dict(run.mesh.shape),
        "grad_accum": run.grad_accum,
        "attention": run.fns.spec.attention,  # model.attention=auto resolved
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "slurm_job": scheduler_job(),  # the SLURM job that last trained the run (None outside SLURM)
        "init_from": origin.init_from,
        "fork_from": origin.fork_from,
        "role": origin.role,
        "start": origin.start,
        "resumed_from": [],
        "config": run.config,
        "versions": versions(),
    }


def checkpoint_meta(run: Run, step: int) -> dict:
    """What each checkpoint records beside the state: enough to load it without the run dir."""
    return {"step": step, "model": run.origin.model_name, "tokenizer": run.store.tokenizer.to_dict(),
            "config": run.config}


class Session:
    """One run's directory from `open` to `close`. `summary` is what `summary.json` will say."""

    def __init__(self, run: Run, mirror: RunMirror | None = None, **recorded):
        self.run, self.mirror, self.recorded = run, mirror, recorded
        self.lock = RunLock(run.run_dir, enabled=run.is_main)
        self.summary: dict = {}
        self.ckpt: Checkpointer | None = None
        self.runlog: RunLog | None = None
        self.new = self.resuming = False
        self.done: dict | None = None  # the summary of a run found completed
        self.closed = False
        self.started = time.time()

    @property
    def name(self) -> str:
        return self.run.run_dir.name

    def open(self) -> bool:
        """Lock the directory and read what it holds; False when the run completed already with this
        config (its summary is `done`, the lock released). A directory another run's config holds
        is refused, every file of it left as it is."""
        self.lock.__enter__()
        try:
            return self._read()
        except BaseException:  # nothing of this run was written: leave the directory as it is
            self.lock.__exit__(None, None, None)
            raise

    def _read(self) -> bool:
        if self.mirror:
            self.mirror.pull()
        previous = previous_state(self.run.run_dir, self.run.config)
        if previous == "completed":
            log.info("%s already completed with this config; nothing to do", self.mirror.url if self.mirror
                     else self.run.run_dir)
            self.done = read_summary(self.run.run_dir)
            self.lock.__exit__(None, None, None)
            return False
        self.new, self.resuming = previous == "new", previous == "resume"
        self.summary = base_summary(self.run) | self.recorded
        if self.resuming:
            self.summary["resumed_from"] = (read_summary(self.run.run_dir) or {}).get("resumed_from", [])
        c = self.run.checkpoint
        self.ckpt = Checkpointer(self.run.run_dir, keep=c.keep, async_save=c.async_save, steps=c.steps,
                                 on_complete=self.mirror.push if self.mirror else None)
        return True

    def start(self, at_most: int | None = None):
        """(state, data iterator state or None, step) where the run starts (its newest checkpoint, at
        step `at_most` or before when given; else fork, fine-tune or fresh), with its log files open.
        A failed start records `status: failed` and leaves no empty `checkpoints/` behind."""
        try:
            state, data_state, step = initial_state(self.run, self.ckpt, at_most)
        except BaseException as exc:
            self.fail(exc)
            if not self.resuming and self.run.is_main:
                try:
                    checkpoint_dir(self.run.run_dir).rmdir()  # the new run's own, still empty
                except OSError:
                    pass
            raise
        self.runlog = self._open_log(step)
        if self.mirror:
            self.mirror.push()  # the store's summary says running, its metrics end at the start step
        return state, data_state, step

    def _open_log(self, start_step: int) -> RunLog:
        """The run's log files, with rows an interrupted attempt logged after its checkpoint dropped."""
        run = self.run
        if start_step:
            self.summary["resumed_from"].append(start_step)
        opened = None
        if run.is_main:
            opened = Trackers(run.logger, run.run_dir, run.config, trackers.last_logged_step(run.run_dir))
            dropped = truncate_metrics(run.run_dir, start_step)
            if start_step or dropped:
                log.info("resuming from step %d (dropped %d metrics rows logged after it)", start_step, dropped)
        runlog = RunLog(run.run_dir, enabled=run.is_main, trackers=opened)
        runlog.summary(self.summary)
        return runlog

    def watchdog(self, on_stall=None) -> watchdog.Watchdog:
        """The run's watchdog (`train.stall_timeout`): a stall ends the run with `status: failed`."""
        return watchdog.Watchdog(self.run.train.stall_timeout, self.run.run_dir / TRAIN_LOG,
                                 process=jax.process_index(), processes=jax.process_count(),
                                 on_stall=on_stall or self.stalled)

    def stalled(self, message: str) -> None:
        """The watchdog's record of a run that stopped making progress (its thread; the process ends next)."""
        self.summary.update(status="failed", error={"message": message, "stalled": True},
                            wall_seconds=round(time.time() - self.started, 3))
        if self.run.is_main:
            write_summary(self.run.run_dir, self.summary)

    def fail(self, exc: BaseException) -> None:
        self.summary = self.summary or {"status": "failed", **self.recorded}
        self.summary.update(status="failed", error={"message": f"{type(exc).__name__}: {exc}",
                                                    "traceback": traceback.format_exc()})
        self.close()

    def close(self) -> None:
        """Wait for the last checkpoint, write the final summary, upload the run's files, unlock (once)."""
        if self.closed:
            return
        self.closed = True
        held = self.lock.held or not self.lock.enabled
        try:
            if self.ckpt is not None:
                self._finish()
            elif self.run.is_main and held:  # a start that failed before its checkpoints opened
                RunLog(self.run.run_dir, enabled=True).summary(self.summary)
        finally:
            self.lock.__exit__(None, None, None)

    def _finish(self) -> None:
        try:
            self.ckpt.close()
        except Exception as exc:  # noqa: BLE001 - keep the summary even if the last save failed
            self.summary.setdefault("error", {"message": f"checkpoint close failed: {exc}"})
        self.summary["wall_seconds"] = round(time.time() - self.started, 3)
        wrote = True
        try:  # on a full disk these fail too: the error that ended the run is the one to report
            self.runlog = self.runlog or RunLog(self.run.run_dir, enabled=self.run.is_main)
            self.runlog.summary(self.summary)
        except OSError as exc:
            log.error("could not write %s's summary.json: %s", self.run.run_dir, exc)
            wrote = False
        try:
            self.runlog.close()
        except OSError as exc:
            log.error("could not close %s's metrics and trackers: %s", self.run.run_dir, exc)
        if self.mirror and wrote:
            self.mirror.push()

