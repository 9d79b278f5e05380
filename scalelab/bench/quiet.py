"""How busy the rest of the machine was while a measured child process ran (standard library only).

`watch()` reads the machine's busy CPU time (/proc/stat: every CPU's user, nice, system, irq,
softirq and steal jiffies) and this process's and its reaped children's CPU time
(`resource.getrusage`) before and after an interval. The CPU seconds that neither this process nor
the children it waited for used belong to other processes:

    others_cpu_fraction = (busy CPU s - child CPU s - own CPU s) / (wall s * CPU count)

A timing taken while others used more than `CONTAMINATED_ABOVE` of the machine is marked
`contaminated`. Run the measured child with `subprocess.run` (it waits, so the child's time is in
RUSAGE_CHILDREN); a process started with Popen and not yet waited for counts as "others".
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from dataclasses import asdict, dataclass

CONTAMINATED_ABOVE = 0.05  # others' share of all CPUs above which a timing is marked contaminated
PROC_STAT = "/proc/stat"


def busy_cpu_seconds(path: str = PROC_STAT) -> float | None:
    """Busy CPU seconds of the whole machine since boot (None where /proc/stat is missing)."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@dataclass
class Load:
    """What the rest of the machine did during one interval."""

    wall_seconds: float = 0.0
    cpus: int = 0
    busy_cpu_seconds: float | None = None  # the whole machine
    child_cpu_seconds: float = 0.0  # the children waited for during the interval
    own_cpu_seconds: float = 0.0  # this process
    others_cpu_seconds: float | None = None
    others_cpu_fraction: float | None = None  # of wall seconds x CPU count, in [0, 1]
    contaminated: bool | None = None  # None: not measurable here (no /proc/stat)

    def as_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def watch(cpus: int | None = None):
    """`with watch() as load: subprocess.run(...)`: `load` is filled in when the block ends."""
    load = Load(cpus=cpus or os.cpu_count() or 1)
    busy0, child0, own0 = busy_cpu_seconds(), _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    try:
        yield load
    finally:
        busy1, t1 = busy_cpu_seconds(), time.perf_counter()
        load.wall_seconds = t1 - t0
        load.child_cpu_seconds = _cpu(resource.RUSAGE_CHILDREN) - child0
        load.own_cpu_seconds = _cpu(resource.RUSAGE_SELF) - own0
        if busy0 is not None and busy1 is not None and load.wall_seconds > 0:
            load.busy_cpu_seconds = busy1 - busy0
            others = max(0.0, load.busy_cpu_seconds - load.child_cpu_seconds - load.own_cpu_seconds)
            load.others_cpu_seconds = others
            load.others_cpu_fraction = min(1.0, others / (load.wall_seconds * load.cpus))
            load.contaminated = load.others_cpu_fraction > CONTAMINATED_ABOVE
