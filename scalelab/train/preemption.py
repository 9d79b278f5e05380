"""Stop at a step boundary on SIGTERM, SIGINT or SLURM's/submitit's SIGUSR2, on every process alike.

The handler only records the signal. The loop asks `should_stop(step)` after dispatching each
step; when it says yes the loop saves a checkpoint and leaves, the run writes `status: preempted`,
and `hand_over` gives the signal to whatever handler was there before (submitit's requeue handler
under SLURM) or exits with EXIT_PREEMPTED.

A signal may reach only one process of a multi-process run (a node's agent, a `kill` by hand), and
the save and every step are collectives: a process that stopped on its own would leave the others
waiting forever. So each step every process contributes its signal (0: none) to a max over all
processes, and all of them act on the same result: the vote dispatched after step s is read after
step s+1 is dispatched (it is queued behind step s, whose metrics the loop has just read, so reading
it does not wait for step s+1), and every process stops after step s+1. A single process takes part
in no collective: it stops at the next step boundary after its own signal.
"""

from __future__ import annotations

import logging
import signal
import sys

import jax

from scalelab.runtime import consensus, faults

log = logging.getLogger("scalelab")

EXIT_PREEMPTED = 3
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class PreemptionGuard:
    def __init__(self):
        self.received: int | None = None  # the signal this process received
        self.signum: int | None = None  # the signal the run stops for (received here or elsewhere)
        self._previous = {}
        self._vote = None  # the previous step's vote, in flight
        self._multi = jax.process_count() > 1

    @property
    def requested(self) -> bool:
        """Whether the run stops (with several processes: once `should_stop` agreed on it)."""
        return self.signum is not None

    def should_stop(self, step: int) -> bool:
        """Whether the loop stops after `step`: every process gets the same answer at the same step.

        Call it once per step on every process (it takes part in a collective).
        """
        faults.at_step(step)
        if self.signum is not None or not self._multi:
            return self.signum is not None
        previous, self._vote = self._vote, consensus.dispatch_max(self.received or 0)
        agreed = consensus.read(previous) if previous is not None else 0
        if agreed:
            self.signum = agreed
            where = "this process" if self.received else "another process"
            log.warning("signal %s on %s: every process stops after step %d", signal.Signals(agreed).name,
                        where, step)
        return bool(agreed)

    def _record(self, signum, frame) -> None:
        self.received = signum
        if not self._multi:  # nothing to agree on: stop at the next step boundary
            self.signum = signum

    def __enter__(self) -> PreemptionGuard:
        for s in SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._record)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def hand_over(self) -> None:
        """After the checkpoint: let the previous handler (e.g. submitit's requeue) act, then exit.

        Only a process that received the signal itself hands it on: under submitit a process that
        stopped for another's signal has nothing to requeue (rank 0 requeues the whole job).
        """
        previous = self._previous.get(self.received) if self.received is not None else None
        self.__exit__()
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(self.received, None)
        sys.exit(EXIT_PREEMPTED)
