"""The training loop: dispatch a step, record the previous one, evaluate and checkpoint on cadence,
stop cleanly on a preemption signal.

The loop never waits for the device on an ordinary step: it dispatches step s, then reads step
s-1's three scalars (loss, grad norm, lr), checks them for NaN/Inf and logs them.
"""

from __future__ import annotations

import logging
import math
import time

import jax
import numpy as np

from scalelab.data import pipeline
from scalelab.runfiles import TRAIN_LOG
from scalelab.runtime import hardware, watchdog
from scalelab.train.build import Run
from scalelab.train.progress import Progress
from scalelab.train.session import checkpoint_meta

log = logging.getLogger("scalelab")


class Diverged(RuntimeError):
    def __init__(self, step: int, metrics: dict):
        super().__init__(f"non-finite training metrics at step {step}: {metrics}")
        self.step = step


def evaluate(run: Run, params, batches, beat=None) -> float:
    """Mean loss over the held-out batches, one batch in flight at a time.

    Dispatching every batch at once (64 by default) deadlocked resumed two-process runs on CPUs
    (2 of 2 tries): each eval step is a collective program (FSDP all-gathers), and XLA:CPU left one
    device's launch waiting for a slot while its sibling sat in an all-gather of the program that
    device had not started (NOTES.md, session 10, has the stacks). Waiting for each loss costs one
    host round trip per batch. `beat()` is called after each batch (the watchdog's progress).
    """
    losses = []
    for b in batches:
        losses.append(float(run.steps.eval_step(params, run.to_global(b))))
        if beat is not None:
            beat()
    return float(np.mean(losses))


def evaluate_tasks(run: Run, params, beat=None) -> dict:
    """`train.eval_tasks` scored with `params` (`scalelab.tasks.suite`): per task its accuracy,
    length-normalised accuracy, the right choice's bits per byte and its number of items, as
    `task/NAME/acc`, `.../acc_norm`, `.../bpb`, `.../items`; `beat()` after each task and each block
    of a harness task's rows (the watchdog's progress)."""
    if not run.train.eval_tasks:
        return {}
    from scalelab.tasks.suite import score_tasks

    return score_tasks(run.fns, params, run.store.tokenizer, run.shape.seq_len, run.train.eval_tasks,
                       run.train.eval_tasks_limit or None, run.train.eval_tasks_include, beat)


def task_fields(row: dict) -> dict:
    """The task metrics of a metrics row (for the summary)."""
    return {k: v for k, v in row.items() if k.startswith("task/")}


class Recorder:
    """Turns each step's metrics into a `metrics.jsonl` row (speed, MFU, eval loss on eval steps)."""

    def __init__(self, run: Run, runlog, bar, eval_set, start_step: int, peak: float, dog=watchdog.OFF):
        self.run, self.runlog, self.bar, self.eval_set, self.peak = run, runlog, bar, eval_set, peak
        self.dog = dog
        self.last_step, self.last_time = start_step, time.time()
        self.eval_seconds = 0.0
        self.last_row: dict = {}

    def record(self, step: int, metrics, params, evaluate_now: bool = False) -> None:
        plain = all(type(v) is float for v in metrics.values())
        values = metrics if plain else {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not all(math.isfinite(values[k]) for k in ("train_loss", "grad_norm")):
            raise Diverged(step, values)
        if not (evaluate_now or self.run.cadence.logs(step)):
            return
        now = time.time()
        tps, fpt = self.run.plan.tokens_per_step, self.run.counts.flops_per_token
        seconds = now - self.last_time
        speed = (step - self.last_step) * tps / seconds if seconds > 0 else float("nan")
        row = {"step": step, "tokens": step * tps, "flops": step * tps * fpt, **values,
               "tokens_per_second": speed, "mfu": speed * fpt / self.peak}
        if evaluate_now:
            self.dog.beat("eval", step)
            row["eval_loss"] = evaluate(self.run, params, self.eval_set, beat=lambda: self.dog.beat("eval", step))
            row["eval_bpb"] = self.run.bpb(row["eval_loss"])
            row |= evaluate_tasks(self.run, params, beat=lambda: self.dog.beat("eval", step))
            self.eval_seconds += time.time() - now
            now = time.time()
        self.last_step, self.last_time = step, now
        self.last_row = row
        self.runlog.log(row)
        self.bar.update(step, row)


def data_streams(run: Run, data_state, threads: bool = True):
    """The training iterator (at its saved position when resuming; see `pipeline.train_iterator`
    for `threads`) and the held-out batches."""
    t = run.train
    data_iter = pipeline.train_iterator(run.store, run.data, t.batch_size, t.seed, run.plan.steps,
                                        jax.process_index(), jax.process_count(), threads)
    if data_state is not None:
        data_iter.set_state(data_state)
    eval_set = pipeline.eval_batches(run.store, run.data, t.batch_size, t.eval_tokens,
                                     jax.process_index(), jax.process_count())
    return data_iter, eval_set


def train_loop(run: Run, state, data_state, start_step: int, ckpt, runlog, summary: dict, guard,
               dog=watchdog.OFF) -> dict:
    """Train from `start_step` to the end (or a preemption); the summary's final fields. Progress
    is reported to `dog` (runtime/watchdog.py) after each step, eval batch and checkpoint save."""
    t, total = run.train, run.plan.steps
    peak, peak_method = hardware.peak_flops(t.precision)
    data_iter, eval_set = data_streams(run, data_state)
    eval_loss = summary.get("final_eval_loss")
    loop_start, first_done, pending = time.time(), None, None
    hyper = run.hyper_input()
    with Progress(total, enabled=run.is_main and t.progress, log_file=run.run_dir / TRAIN_LOG) as bar:
        rec = Recorder(run, runlog, bar, eval_set, start_step, peak, dog)
        bar.update(start_step, None)
        dog.beat("train step", start_step)
        for step in range(start_step + 1, total + 1):
            state, metrics = run.steps.train_step(state, run.to_global(next(data_iter)), hyper)
            if pending is not None:
                rec.record(*pending, state["params"])
            pending = (step, metrics)
            if first_done is None:
                jax.block_until_ready(metrics)
                first_done = (step, time.time())
            is_eval, is_ckpt = run.cadence.evaluates(step), run.cadence.saves(step)
            if guard.should_stop(step) or is_eval or is_ckpt or step == total:
                rec.record(step, metrics, state["params"], evaluate_now=is_eval)
                pending = None
                eval_loss = rec.last_row["eval_loss"] if is_eval else eval_loss
                if step == total or is_ckpt or guard.requested:
                    dog.beat("checkpoint save", step)
                    ckpt.save(step, state, data_iter.get_state(), checkpoint_meta(run, step), force=True)
                if guard.requested:
                    log.warning("signal %s: saved a checkpoint at step %d, stopping", guard.signum, step)
                    break
            dog.beat("train step", step)
    speed = steady_speed(run, rec, first_done, loop_start, peak)
    tasks = task_fields(rec.last_row)
    if eval_loss is None:  # resumed from the final checkpoint of a run killed before its summary
        dog.beat("eval", rec.last_step)
        eval_loss = evaluate(run, state["params"], eval_set, beat=lambda: dog.beat("eval", rec.last_step))
        tasks = evaluate_tasks(run, state["params"])
    result = {**tasks, "final_eval_loss": eval_loss, "final_train_loss": rec.last_row.get("train_loss"),
              "final_eval_bpb": run.bpb(eval_loss) if eval_loss is not None else None,
              "peak_flops": peak, "peak_method": peak_method, "steps_done": rec.last_step}
    return result | speed


def steady_speed(run: Run, rec: Recorder, first_done, loop_start: float, peak: float) -> dict:
    """tokens/s and MFU after the first (compiling) step, evaluation time excluded."""
    if first_done is None:
        return {}
    done_step, done_time = first_done
    steady = (rec.last_step - done_step) * run.plan.tokens_per_step
    seconds = time.time() - done_time - rec.eval_seconds
    speed = steady / seconds if steady > 0 and seconds > 0 else float("nan")
    return {"tokens_per_second": speed, "mfu": speed * run.counts.flops_per_token / peak,
            "first_step_seconds": round(done_time - loop_start, 3)}
