"""Injected faults, for tests of the paths that only a misbehaving cluster takes.

`SCALELAB_FAULTS` lists faults, comma-separated; each applies to every process unless it ends in
`@P` (process P only):

    save:N           the N-th checkpoint save of this process raises a transient-looking OSError
    restore:N        the N-th checkpoint restore raises one (N may be `*`: every restore)
    die_at_step:K    the process ends at once (os._exit, no clean-up) once it has dispatched step K
    step_delay:S     every step takes S seconds longer (so that a signal sent from outside lands mid-run)
    stall_at_step:K  the process stops making progress once it has dispatched step K (sleeps forever:
                     what a hung collective looks like from the outside; the watchdog's test)

Unset, nothing here costs more than one dict lookup. Counts are per process and start at 1.
"""

from __future__ import annotations

import errno
import os
import time

ENV = "SCALELAB_FAULTS"
KINDS = ("save", "restore", "die_at_step", "step_delay", "stall_at_step")
EXIT_DIED = 137  # what a SIGKILL looks like to a shell

_counts: dict[str, int] = {}
_parsed: dict[str, dict[str, str]] = {}


class FaultSpecError(ValueError):
    pass


def _process_index() -> int:
    import jax

    return jax.process_index()


def parse(text: str) -> dict[str, str]:
    """{kind: value} of the faults that apply to this process; raises FaultSpecError naming the bad entry."""
    faults = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        kind, _, value = entry.partition(":")
        value, _, process = value.partition("@")
        if kind not in KINDS or not value:
            raise FaultSpecError(f"{ENV}: cannot read {entry!r} (known: {', '.join(k + ':N' for k in KINDS)})")
        if process and int(process) != _process_index():
            continue
        faults[kind] = value
    return faults


def active() -> dict[str, str]:
    text = os.environ.get(ENV, "")
    if text not in _parsed:
        _parsed[text] = parse(text) if text else {}
    return _parsed[text]


def maybe_fail(operation: str, what: str) -> None:
    """Raise the injected OSError if this is the N-th `operation` ("save" or "restore")."""
    planned = active().get(operation)
    if planned is None:
        return
    _counts[operation] = count = _counts.get(operation, 0) + 1
    if planned == "*" or int(planned) == count:
        raise OSError(errno.EIO, f"injected fault ({ENV}={operation}:{planned}): input/output error on {what}")


def at_step(step: int) -> None:
    """The per-step faults: a slower step, the process dying or stalling after step `step`."""
    faults = active()
    if not faults:
        return
    if "step_delay" in faults:
        time.sleep(float(faults["step_delay"]))
    if "die_at_step" in faults and int(faults["die_at_step"]) == step:
        os._exit(EXIT_DIED)
    if "stall_at_step" in faults and int(faults["stall_at_step"]) == step:
        while True:
            time.sleep(3600)


def reset() -> None:
    """Forget the counts (tests that inject several faults in one process)."""
    _counts.clear()
    _parsed.clear()
