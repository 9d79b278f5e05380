"""A run that stops making progress ends itself, with a reason, instead of holding its nodes.

The run reports progress as it goes (`beat(phase, step)`: after each train step, each eval batch,
around checkpoint saves, restores and the final wait for the last save). A daemon thread checks the
time since the last report; once it exceeds what the current phase is allowed, it

  1. appends every thread's Python stack of this process to the run's `train.log` (each process of
     a multi-process run does, under a header naming it: a stall in one process leaves its peers
     waiting in a collective, so their watchdogs fire too),
  2. calls the run's `on_stall` with a message naming the phase and the step (process 0 writes
     `status: failed` with that `error` into summary.json),
  3. ends the process with EXIT_STALLED. The stuck thread sits in native code that no Python
     exception reaches; `os._exit` is the only way out that a scheduler sees at once. In a
     multi-process run, process 0 (which hosts JAX's coordination service) waits `LEADER_GRACE`
     seconds at most first: when it went first, its peers' coordination clients saw the service
     vanish and aborted (SIGABRT; 1 of 6 tries of the two-process test) before their own watchdogs
     ended them with reason (8 of 8 tries end both with the reason since).

What a phase is allowed (`train.stall_timeout`):
  * a number of seconds: that, for every phase once the first train step has completed (start-up,
    restore and the first step's compilation get at least `FIRST`: a compilation is not a stall);
  * 0: no watchdog;
  * unset (the default): `FLOOR` seconds, or `FACTOR` times the longest gap between two reports of
    that phase seen so far in this process if that is longer, not counting the phase's first gap
    (the first step and the first eval compile). A phase not yet measured gets `FLOOR`, or `FACTOR`
    times the slowest gap of any phase so far, compilations included (an eval compiles a smaller
    program than the train step did); before anything was measured (start-up, restore, the first
    step's compilation) a run gets `FIRST` seconds.
A phase is reported when it starts and after each unit of its work, so the time since the last
report is charged to the phase now running.
The watchdog's own thread never touches JAX, so it runs whatever the devices are doing.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("scalelab")

EXIT_STALLED = 5
FLOOR = 300.0  # seconds: the least any measured phase is allowed
FACTOR = 20.0  # times the longest gap seen in that phase
FIRST = 1800.0  # seconds before anything was measured (start-up, restore, the first compilation)
POLL = 1.0  # seconds between the thread's checks (at most a tenth of a fixed timeout)
LEADER_GRACE = 30.0  # seconds process 0 leaves its peers to end first (at most the allowed time)


class _Off:
    """The watchdog of code run without one (tests, notebooks): progress reports go nowhere."""

    def beat(self, phase: str, step: int) -> None:
        pass


OFF = _Off()


def allowed(timeout: float | None, longest: float | None, slowest: float | None = None,
            trained: bool = True) -> float:
    """Seconds a phase may go without a report: fixed, or scaled from its own longest gap so far, or
    (not measured yet) from the slowest gap of any phase; at least FIRST until a step has `trained`."""
    if timeout:
        return float(timeout) if trained else max(float(timeout), FIRST)
    if longest is None:  # the first step's compilation, however long, is not a stall
        return FIRST if slowest is None or not trained else max(FLOOR, FACTOR * slowest)
    return max(FLOOR, FACTOR * longest)


class Watchdog:
    """One per process of a run; `with Watchdog(...) as dog:` starts and stops its thread."""

    def __init__(self, timeout: float | None, log_paths, on_stall: Callable[[str], None], process: int = 0,
                 processes: int = 1):
        """`log_paths`: the train.log (or, for a packed group, every member's) that gets the stacks;
        `process` of `processes`: this process's index and the run's process count."""
        self.timeout = timeout
        self.enabled = timeout is None or timeout > 0
        paths = [] if log_paths is None else [log_paths] if isinstance(log_paths, str | Path) else log_paths
        self.log_paths = [Path(p) for p in paths]
        self.on_stall = on_stall
        self.process, self.processes = process, processes
        self._phase, self._step = "start", 0
        self._last = time.monotonic()
        self._longest: dict[str, float] = {}
        self._gaps: dict[str, int] = {}
        self._slowest: float | None = None  # the slowest gap of any phase (compilations included)
        self._train_steps: set[int] = set()  # steps reported by "train step" (two: one has completed)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, phase: str, step: int) -> None:
        """Progress: `phase` ("train step", "eval", "checkpoint save", ...) reached `step`."""
        now = time.monotonic()
        with self._lock:
            if self._phase != "start":
                self._slowest = max(now - self._last, self._slowest or 0.0)
            if phase == self._phase:  # a gap between two reports of one phase measures it
                self._gaps[phase] = self._gaps.get(phase, 0) + 1
                if self._gaps[phase] > 1:  # the phase's first gap compiles: not a measure of it
                    self._longest[phase] = max(now - self._last, self._longest.get(phase, 0.0))
            self._phase, self._step, self._last = phase, step, now
            if phase == "train step" and len(self._train_steps) < 2:
                self._train_steps.add(step)

    def __enter__(self) -> Watchdog:
        if self.enabled:
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._watch, name="scalelab-watchdog", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()

    def _watch(self) -> None:
        poll = min(POLL, self.timeout / 10) if self.timeout else POLL
        while not self._done.wait(poll):
            with self._lock:
                phase, step = self._phase, self._step
                waited = time.monotonic() - self._last
                limit = allowed(self.timeout, self._longest.get(phase), self._slowest, len(self._train_steps) > 1)
            if waited > limit:
                self._stalled(phase, step, waited, limit)
                return

    def _stalled(self, phase: str, step: int, waited: float, limit: float) -> None:
        where = f"after step {step}" if phase == "train step" else f"at step {step}"
        message = (f"stalled: no progress for {waited:.0f} s (allowed {limit:.0f} s) in phase '{phase}' {where} "
                   f"on process {self.process}; every thread's stack is in train.log")
        log.error("%s", message)
        self._dump_stacks(message)
        try:
            self.on_stall(message)
        except Exception as exc:  # noqa: BLE001 - the exit below must happen whatever the summary does
            log.error("writing the stall into the summary failed: %s", exc)
        for handler in logging.getLogger().handlers + log.handlers:
            try:
                handler.flush()
            except Exception:  # noqa: BLE001
                pass
        sys.stderr.flush()
        if self.process == 0 and self.processes > 1:
            # its peers wait in a collective and time out within about the same allowed time
            time.sleep(min(limit, LEADER_GRACE))
        os._exit(EXIT_STALLED)

    def _dump_stacks(self, message: str) -> None:
        targets = [sys.stderr]
        for path in self.log_paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            targets.append(open(path, "a"))  # noqa: SIM115 - closed below
        for out in targets:
            out.write(f"\n==== process {self.process}: {message}\n")
            out.flush()
            faulthandler.dump_traceback(out, all_threads=True)
            out.flush()
            if out is not sys.stderr:
                out.close()
