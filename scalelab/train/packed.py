"""Packed training: runs that share one step program train together as one vmapped program.

Each member is a normal run (its own run directory, lock, checkpoints, data order, schedule,
metrics and summary); only the device program is shared. Members are stacked along a leading
axis of the train state, the batches and the `Hyper` input, and one jitted call runs K steps of
every member (`steps_per_call`, a `lax.scan` of the single-run step, vmapped over the members; a
member's call ends early at its evals, checkpoints and last step). When a member finishes (or diverges) it is evaluated,
finalized and taken out of the stack: the remaining members go on in a program for M - 1 (one
more compilation per distinct M), so a finished member's slot costs nothing afterwards.

Which runs can share a program is decided by `group_key` (scalelab/sweep/packed.py groups a
sweep's jobs by it): everything that shapes the program (model, sequence length, batch,
precision, microbatches, remat, mesh, data, the optimizer) must be equal; what the step takes as
inputs (learning rate and schedule, weight decay, clipping, Adam's betas, Muon's momentum and RMS,
seed, run length) may differ.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from scalelab.config import ConfigError
from scalelab.runfiles import TRAIN_LOG
from scalelab.runtime import faults, watchdog
from scalelab.train.build import Run
from scalelab.train.loop import Diverged, Recorder, data_streams, evaluate, evaluate_tasks, task_fields
from scalelab.train.preemption import PreemptionGuard
from scalelab.train.progress import Progress
from scalelab.train.runlog import read_metrics, write_summary
from scalelab.train.session import Session, checkpoint_meta
from scalelab.train.step import (
    build_member_parallel_step,
    build_packed_chunk_step,
    rules_key,
    stacked_sharding,
)

log = logging.getLogger("scalelab")

# training steps per jitted call of a packed group (hydra.launcher.steps_per_call): enough to make the
# per-call dispatch, batch transfer and metrics read negligible for tiny models
STEPS_PER_CALL = 16
# members whose train state is at most this many bytes are stacked and sliced on the host (`Layout`)
HOST_STACK_BYTES = 16 * 2**20


@dataclass(eq=False)
class Member:
    """One run of a packed group: its `Session` (the same start and end as a solo run's) and its place
    in the group's loop."""

    session: Session
    data_iter: object = None
    eval_set: list = field(default_factory=list)
    step: int = 0
    rec: Recorder | None = None
    first_done: tuple | None = None
    eval_loss: float | None = None
    # a member that completed before a relaunch, kept in the program as an idle copy until the step
    # it ended at, so that the others train in programs of the widths they had (see PackedGroup.start)
    ghost: bool = False
    resuming: bool = False  # it had started before this launch (its run directory says so)

    run = property(lambda self: self.session.run)
    name = property(lambda self: self.session.name)
    summary = property(lambda self: self.session.summary)
    ckpt = property(lambda self: self.session.ckpt)


def group_key(run: Run) -> tuple:
    """Runs with equal keys can train as one vmapped program."""
    data = {k: v for k, v in run.config["data"].items() if k not in ("tokens", "prefetch")}
    return (run.fns.spec, tuple(run.mesh.shape.items()), rules_key(run.rules), run.train.batch_size,
            run.grad_accum, run.mesh_impl, str(sorted(data.items())), run.train.eval_tokens,
            run.optimizer)  # the optimizer shapes the train state and the update


@jax.jit
def _stacked(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _stack(trees: list, shardings, on_host: bool = False):
    """Member trees -> one tree with a leading member axis, placed with `shardings`.

    `on_host`: stacked by numpy (members whose every array one process holds whole; no compilation),
    else by one jitted stack on the first device."""
    if on_host:
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(trees))
        return jax.device_put(stacked, shardings)
    device = jax.local_devices()[0]
    return jax.device_put(_stacked(jax.device_put(trees, device)), shardings)


@jax.jit
def _slice(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _member_of(stacked, i: int, shardings, host_copy=None):
    """Member i's tree out of a stacked tree, placed as a single run's: sliced from `host_copy`
    (the stacked tree as numpy) when given, else by one compiled slice per tree."""
    if host_copy is not None:
        # copied out of the stack: the device arrays made from it must not share its memory
        return jax.device_put(jax.tree.map(lambda x: np.array(x[i]), host_copy), shardings)
    return jax.device_put(_slice(stacked, jnp.int32(i)), shardings)


class PackedGroup:
    """Trains a list of runs that share `group_key` to the end, as one program."""

    def __init__(self, runs: list[Run]):
        keys = {group_key(r) for r in runs}
        if len(keys) != 1:
            raise ValueError("a packed group's runs must share one step program (see group_key)")
        self.leader = runs[0]
        self.members: list[Member] = []
        self.results: dict[str, dict] = {}
        self.names = [r.run_dir.name for r in runs]
        self.pending: list[Member] = [Member(Session(r, packed_with=self.names)) for r in runs]
        self.completed: list[Member] = []  # members found completed when the group started

    # ---- starting ---------------------------------------------------------------------------
    def start(self) -> list:
        """Open every member (skipping completed ones) and restore them in step; returns the member
        states to stack.

        Members resume together from the newest step at which every one of them holds a checkpoint
        (after a kill -9 some may have saved one more than others): the group then makes the same
        calls, of the same width, as the run that was not interrupted, so every loss repeats
        bitwise. A member that no longer holds that step (rotated out) resumes from its newest.

        When the group is recovered (a member had started before), a member that completed before
        the relaunch but was still training at that step in the run that was not interrupted stays
        in the program as a ghost (an idle copy: no data, no files) until the step it ended at:
        programs of different widths round differently, so without it the others would resume in a
        narrower program than they had.
        """
        opened = [m for m in self.pending if self._attempt(m, self._open)]
        common = min((max(m.ckpt.steps(), default=0) for m in opened), default=0)
        restored = {}
        for m in opened:
            state = self._attempt(m, lambda m: self._restore(m, common))
            if state is not None:
                restored[m.name] = state
        if not restored:
            return []
        # ghosts only where a group is recovered; a study extended with new runs beside completed
        # ones trains the new runs alone (ghosts there would cost a whole run's compute each)
        recovering = any(m.resuming for m in opened)
        states = []
        for m in self.pending:  # the planned order, ghosts in their places
            if m.name in restored:
                self.members.append(m)
                states.append(restored[m.name])
            elif recovering and m in self.completed and common < m.run.cadence.total:
                m.ghost, m.step = True, common
                self.members.append(m)
                states.append(next(iter(restored.values())))  # its values never reach the others
        return states

    def _attempt(self, m: Member, action):
        """`action(m)`, or None with `m` failed: one member's bad start must not stop the others."""
        try:
            return action(m)
        except Exception as exc:  # noqa: BLE001
            self._fail(m, exc)
            return None

    def _open(self, m: Member) -> bool:
        """Open the member's session; False if it completed already."""
        if not m.session.open():
            self.results[m.name] = m.session.done
            self.completed.append(m)
            return False
        m.resuming = m.session.resuming
        return True

    def _restore(self, m: Member, common: int):
        """The member's state at `common` (or its newest, see `start`), its log and data streams."""
        held = m.ckpt.steps()
        at_most = common if any(s <= common for s in held) else None
        state, data_state, m.step = m.session.start(at_most)
        if held and m.step < held[-1]:
            log.info("%s resumes at step %d with its group (its newest checkpoint is %d)", m.name, m.step,
                     held[-1])
        m.data_iter, m.eval_set = data_streams(m.run, data_state, threads=False)
        m.eval_loss = m.summary.get("final_eval_loss")
        return state

    def finish_ended(self, states: list, peak: float) -> list:
        """Finalize the members that resumed at their last step (killed between their final checkpoint
        and their summary): evaluated and completed without a step; the states of the others."""
        kept = []
        for m, state in zip(list(self.members), states, strict=True):
            if m.ghost or m.step < m.run.cadence.total:
                kept.append(state)
                continue
            log.info("%s resumed at its last step (%d): finalizing", m.name, m.step)
            self.members.remove(m)
            rows = [r for r in read_metrics(m.run.run_dir) if "train_loss" in r]
            m.rec.last_row = rows[-1] if rows else {}
            try:
                self._complete(m, state["params"], peak, "completed")
            except Exception as exc:  # noqa: BLE001 - as in start: one member must not stop the others
                self._fail(m, exc)
        return kept

    # ---- ending a member --------------------------------------------------------------------
    def _fail(self, m: Member, exc: BaseException) -> None:
        m.session.fail(exc)
        self._ended(m)
        log.error("%s failed: %s", m.name, exc)

    def _close(self, m: Member) -> None:
        m.session.close()
        self._ended(m)

    def _ended(self, m: Member) -> None:
        if m.rec is not None:
            m.rec.bar.__exit__(None, None, None)
        self.results[m.name] = m.summary

    def _complete(self, m: Member, params, peak: float, status: str) -> None:
        rec = m.rec
        tasks = task_fields(rec.last_row)
        if m.eval_loss is None:
            rec.dog.beat("eval", m.step)
            m.eval_loss = evaluate(m.run, params, m.eval_set, beat=lambda: rec.dog.beat("eval", m.step))
            tasks = evaluate_tasks(m.run, params)
        m.summary.update(tasks)
        m.summary.update(final_eval_loss=m.eval_loss, final_train_loss=rec.last_row.get("train_loss"),
                         final_eval_bpb=m.run.bpb(m.eval_loss), peak_flops=peak, steps_done=rec.last_step,
                         status=status)
        if m.first_done is not None:
            done_step, done_time = m.first_done
            seconds = time.time() - done_time - rec.eval_seconds
            speed = (rec.last_step - done_step) * m.run.plan.tokens_per_step / seconds if seconds > 0 else None
            if speed:
                m.summary.update(tokens_per_second=speed, mfu=speed * m.run.counts.flops_per_token / peak)
        log.info("%s: %s at step %d, eval loss %.4f", m.name, status, rec.last_step, m.eval_loss)
        self._close(m)


class Layout:
    """Where a packed group's stack lives: split over the devices of `member_mesh` (each device
    trains whole members, no collectives), or replicated with each member sharded over the run's
    own mesh as a single run would be (for members too large for one device)."""

    def __init__(self, leader: Run, member_mesh=None):
        self.leader, self.member_mesh = leader, member_mesh
        self.spread = None if member_mesh is None else jax.sharding.NamedSharding(
            member_mesh, jax.sharding.PartitionSpec("data"))
        # small members of one process are stacked and sliced on the host: a copy, where the jitted
        # stack and slice would each compile (~0.3 s a tree for a tiny model)
        state_bytes = 4 * 3 * leader.counts.params_total  # fp32 parameters and two moments
        self.on_host = jax.process_count() == 1 and state_bytes <= HOST_STACK_BYTES

    def width(self, members: int) -> int:
        """The stack's size: the members, plus idle copies so that it splits over the devices."""
        multiple = 1 if self.member_mesh is None else self.member_mesh.size
        return -(-members // multiple) * multiple

    def train_step(self, width: int):
        """The group's jitted call: K steps of every member (see `steps_of_one_run`)."""
        run = self.leader
        if self.member_mesh is not None:
            return build_member_parallel_step(run.fns, self.member_mesh, run.grad_accum, run.optimizer)
        if run.mesh_impl != "jit":
            raise ConfigError("mesh.impl", "packed sweeps run with mesh.impl=jit")
        return build_packed_chunk_step(run.fns, run.mesh, rules_key(run.rules), run.train.batch_size,
                                       run.grad_accum, width, run.optimizer)

    def shardings(self, width: int):
        """(state, batches, per-member input) shardings of a stack of `width`."""
        if self.spread is not None:
            return self.spread, self.spread, self.spread
        steps = self.leader.steps
        state = jax.tree.map(lambda s: stacked_sharding(s, width), steps.state_shardings)
        batches = jax.sharding.NamedSharding(steps.mesh, jax.sharding.PartitionSpec(None, None,
                                                                                     *steps.batch_sharding.spec))
        return state, batches, stacked_sharding(steps.hyper_sharding, width)


class PackedLoop:
    """The loop of a packed group: one vmapped step per iteration, per-member bookkeeping."""

    def __init__(self, group: PackedGroup, peak: float, layout: Layout, steps_per_call: int | None = None,
                 dog=watchdog.OFF):
        self.g, self.peak, self.layout, self.dog = group, peak, layout, dog
        self.steps_per_call = max(1, int(steps_per_call or STEPS_PER_CALL))
        self.step_fn = self.state = self.hyper = None
        self.width = 0
        self._host = None  # the stacked state as numpy, read once after a call for every member that needs it

    def _compile(self, states: list) -> None:
        members = len(self.g.members)
        self.width = self.layout.width(members)
        ghosts = self.width - members
        self.step_fn = self.layout.train_step(self.width)
        state_sh, self.batch_sh, self.member_sh = self.layout.shardings(self.width)
        hyper_sh = self.member_sh
        on_host = self.layout.on_host
        self.state = _stack(states + [states[-1]] * ghosts, state_sh, on_host)
        self._host = None
        hypers = [m.run.hyper.as_input() for m in self.g.members]
        self.hyper = _stack(hypers + [hypers[-1]] * ghosts, hyper_sh, on_host)
        log.info("packed: %d member(s) in one program%s: %s", members,
                 f" (+{ghosts} idle cop{'y' if ghosts == 1 else 'ies'} to fill the devices)" if ghosts else "",
                 ", ".join(m.name for m in self.g.members))

    def _steps_ahead(self, m: Member) -> int:
        """How many steps member `m` takes in the next call: up to K, ending at its next eval,
        checkpoint or last step (the loop acts on those between calls)."""
        cadence = m.run.cadence
        for n in range(1, self.steps_per_call):
            step = m.step + n
            if cadence.evaluates(step) or cadence.saves(step):
                return n
        return self.steps_per_call

    def _batches(self, counts: list[int]):
        """Each member's next `counts[i]` batches, padded to K (inactive steps), and the active flags."""
        k = self.steps_per_call
        active_WxK = np.zeros((self.width, k), dtype=bool)
        per_member = []
        for i, (m, n) in enumerate(zip(self.g.members, counts, strict=True)):
            if m.ghost:  # zeros: a ghost's rows reach nothing but its own idle copy
                per_member.append(None)
            else:
                rows_NxBxT1 = m.data_iter.take(n)
                per_member.append(np.concatenate([rows_NxBxT1, np.repeat(rows_NxBxT1[-1:], k - n, axis=0)]))
            active_WxK[i, :n] = True
        real = next(rows for rows in per_member if rows is not None)
        per_member = [np.zeros_like(real) if rows is None else rows for rows in per_member]
        local_WxKxBxT1 = np.stack(per_member + [per_member[-1]] * (self.width - len(per_member)))
        shape = (self.width, k, self.g.leader.train.batch_size, *local_WxKxBxT1.shape[3:])
        batches = jax.make_array_from_process_local_data(self.batch_sh, local_WxKxBxT1, shape)
        return batches, jax.device_put(active_WxK, self.member_sh)

    def _repack(self, leaving: list[int]) -> None:
        """Take the members at `leaving` out of the stack (they are finalized already)."""
        keep = [i for i in range(len(self.g.members)) if i not in leaving]
        states = [self.member_state(i) for i in keep]
        self.g.members = [self.g.members[i] for i in keep]
        if self.g.members:
            self._compile(states)

    def _host_state(self):
        if not self.layout.on_host:
            return None
        if self._host is None:
            self._host = jax.device_get(self.state)
        return self._host

    def member_params(self, i: int):
        host = self._host_state()
        return _member_of(self.state["params"], i, self.g.leader.steps.state_shardings["params"],
                          None if host is None else host["params"])

    def member_state(self, i: int):
        return _member_of(self.state, i, self.g.leader.steps.state_shardings, self._host_state())

    # ---- the loop ---------------------------------------------------------------------------
    def run(self, guard: PreemptionGuard) -> None:
        pending = None
        self.dog.beat("train step", min(m.step for m in self.g.members))
        while any(not m.ghost for m in self.g.members):  # ghosts alone have nothing to train
            members = list(self.g.members)
            counts = [self._steps_ahead(m) for m in members]
            batches, active = self._batches(counts)
            self.state, metrics = self.step_fn(self.state, batches, active, self.hyper)
            self._host = None
            starts = [m.step for m in members]
            for m, n in zip(members, counts, strict=True):
                m.step += n
            for step in range(starts[0] + 1, starts[0] + counts[0] + 1):  # the injected faults of the tests
                faults.at_step(step)
            metrics = (starts, counts, metrics)
            if pending is not None:
                self._record(*pending)
            pending = (members, metrics)
            if members[0].first_done is None:
                jax.block_until_ready(metrics[2])
                for m in members:
                    m.first_done = (m.step, time.time())
            events = {m.name: self._events(m, guard) for m in self.g.members}
            if any(events.values()) or len(self.g.members) < len(members):
                self._record(*pending, events=events)
                pending = None
                self._act(events, guard)
            if guard.requested:
                break
            if self.g.members:
                self.dog.beat("train step", min(m.step for m in self.g.members))
        if pending is not None:
            self._record(*pending)

    def _events(self, m: Member, guard) -> set:
        cadence, step = m.run.cadence, m.step
        if m.ghost:
            return {"end"} if step == cadence.total else set()
        out = set()
        if cadence.evaluates(step):
            out.add("eval")
        if cadence.saves(step) or guard.requested:
            out.add("save")
        if step == cadence.total:
            out.add("end")
        return out

    def _record(self, members: list[Member], chunk, events: dict | None = None) -> None:
        """Write each member's rows of one call; a member with non-finite metrics is finalized as
        diverged (its later steps in that call are dropped with it)."""
        starts, counts, metrics = chunk
        values = jax.device_get(metrics)
        diverged = []
        for j, m in enumerate(members):
            if m not in self.g.members or m.ghost:
                continue
            i = self.g.members.index(m)
            wants_eval = bool(events and "eval" in events.get(m.name, ()))
            try:
                for t in range(counts[j]):
                    own = {k: float(v[j, t]) for k, v in values.items()}
                    last = t == counts[j] - 1
                    m.rec.record(starts[j] + t + 1, own, self.member_params(i) if wants_eval and last else None,
                                 evaluate_now=wants_eval and last)
            except Diverged as exc:
                m.summary.update(status="diverged", diverged_at_step=exc.step, error={"message": str(exc)},
                                 last_checkpoint=max(m.ckpt.steps(), default=None))
                log.warning("%s diverged at step %d; its %d sibling(s) go on", m.name, exc.step,
                            len(self.g.members) - 1)
                self.g._close(m)
                diverged.append(i)
                continue
            if wants_eval:
                m.eval_loss = m.rec.last_row["eval_loss"]
        if diverged:
            self._repack(diverged)

    def _act(self, events: dict, guard) -> None:
        """Save, and finalize the members that reached their last step."""
        ended = []
        for i, m in enumerate(self.g.members):
            todo = events.get(m.name, set())
            if m.ghost:  # it ends where its run ended; it writes nothing
                if "end" in todo:
                    ended.append(i)
                continue
            if "save" in todo:
                self.dog.beat("checkpoint save", m.step)
                m.ckpt.save(m.step, self.member_state(i), m.data_iter.get_state(), checkpoint_meta(m.run, m.step),
                            force=True)
            if "end" in todo:
                self.g._complete(m, self.member_params(i), self.peak, "completed")
                ended.append(i)
            elif guard.requested:
                self.g._complete(m, self.member_params(i), self.peak, "preempted")
        if guard.requested:
            log.warning("signal %s: saved every member's checkpoint, stopping", guard.signum)
            self.g.members = []
        elif ended:
            self._repack(ended)


def stalled_members(group: PackedGroup, message: str) -> None:
    """The watchdog's record of a stalled group (its thread; the process ends next): every member
    still training says failed, with the stall; the sweep's relaunch resumes them."""
    for m in [m for m in group.members if not m.ghost]:
        m.summary.update(status="failed", error={"message": f"packed group {message}", "stalled": True})
        if m.run.is_main:
            write_summary(m.run.run_dir, m.summary)


def member_progress(m: Member) -> Progress:
    """A member's log lines (off a terminal; on one, a packed group draws no bars), in its train.log."""
    on = m.run.is_main and m.run.train.progress and not sys.stderr.isatty()
    return Progress(m.run.plan.steps, enabled=on, log_file=m.run.run_dir / TRAIN_LOG, label=f"{m.name}: ").__enter__()


def train_packed(runs: list[Run], member_mesh=None, guard: PreemptionGuard | None = None,
                 steps_per_call: int | None = None) -> dict[str, dict]:
    """Train `runs` (sharing one `group_key`) as one packed program, `steps_per_call` steps per jitted
    call; each run's summary by name.

    With `member_mesh`, members are spread over its devices (see `Layout`). With a `guard` (the
    caller's), a preemption signal stops the group after saving, and the caller hands it over."""
    from scalelab.runtime import hardware

    group = PackedGroup(runs)
    states = group.start()
    if not group.members:
        return group.results
    peak, _ = hardware.peak_flops(group.leader.train.precision)
    real = [m for m in group.members if not m.ghost]
    dog = watchdog.Watchdog(group.leader.train.stall_timeout, [m.run.run_dir / TRAIN_LOG for m in real],
                            on_stall=lambda message: stalled_members(group, message),
                            process=jax.process_index(), processes=jax.process_count())
    loop = PackedLoop(group, peak, Layout(group.leader, member_mesh), steps_per_call, dog)
    for m in real:
        m.rec = Recorder(m.run, m.session.runlog, member_progress(m), m.eval_set, m.step, peak, dog)
    states = group.finish_ended(states, peak)
    if all(m.ghost for m in group.members):
        return group.results
    own = guard is None
    with PreemptionGuard() if own else contextlib.nullcontext(guard) as guard, dog:
        try:
            loop._compile(states)
            loop.run(guard)
        except BaseException as exc:
            for m in list(group.members):
                if not m.ghost:
                    group._fail(m, exc)
            raise
        if own and guard.requested:
            guard.hand_over()
    return group.results
