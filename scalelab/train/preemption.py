"""Stop at the next step boundary on SIGTERM, SIGINT or SLURM's/submitit's SIGUSR2.

The handler only records the signal; the loop checks `requested` after each step, saves a
checkpoint, writes `status: preempted`, and then hands the signal to whatever handler was there
before (submitit's requeue handler under SLURM), or exits with EXIT_PREEMPTED.
"""

from __future__ import annotations

import signal
import sys

EXIT_PREEMPTED = 3
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


class PreemptionGuard:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _record(self, signum, frame) -> None:
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

    def hand_over(self) -> None:
        """After the checkpoint: let the previous handler (e.g. submitit's requeue) act, then exit."""
        previous = self._previous.get(self.signum)
        self.__exit__()
        if callable(previous) and previous not in (signal.default_int_handler,):
            previous(self.signum, None)
        sys.exit(EXIT_PREEMPTED)
