"""The run directory as a unit of work: one writer at a time, resume only into the same run.

* A lock file held (flock) by the live run's process 0: a second run started on the same directory
  is refused instead of interleaving two runs' files. The OS drops the lock when the process dies,
  so a run killed with SIGKILL never leaves a stale lock behind.
* A directory whose summary says `completed` with the same config is done: relaunching it (a sweep
  relaunch) returns at once. A different config in a used directory is refused, naming the keys.
* On resume, metrics rows logged after the checkpoint's step are dropped, so each step appears once.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from scalelab.runfiles import METRICS
from scalelab.train.runlog import read_summary

LOCK = ".lock"
# keys that may change between the start of a run and its resumption: placement and bookkeeping,
# not the mathematics of training
RESUMABLE_CHANGES = (
    "mesh", "distributed", "checkpoint", "train.progress", "train.remat", "train.grad_accum",
    "train.log_every", "train.stall_timeout", "data.prefetch", "model.attention", "logger",
)


class RunDirError(RuntimeError):
    pass


class RunLock:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / LOCK
        self.enabled = enabled
        self._fd = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            self._fd = None
            raise RunDirError(
                f"{self.path.parent} is in use by a live run (pid {holder}); wait for it, stop it, "
                "or choose another hydra.run.dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _schema_defaults() -> dict:
    """The schema's default of every dotted key (what a key added since a run started means)."""
    from omegaconf import OmegaConf

    from scalelab.config import Config

    return flatten(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring the keys a resume may change.

    A key the old config lacks (a run recorded before the key existed) counts as equal when the
    new config holds the schema's default for it: upgrading scalelab does not orphan run dirs.
    With the same `optimizer.lr_law` on both sides, `optimizer.lr` follows from it (a composed
    config holds a placeholder there, a run records the lr the law gave it) and is not compared."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    if b.get("optimizer.lr_law") and a.get("optimizer.lr_law") == b["optimizer.lr_law"]:
        keys = [k for k in keys if k != "optimizer.lr"]
    diff = [k for k in keys if a.get(k) != b.get(k)
            and not any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)]
    if any(k not in a for k in diff):
        defaults = _schema_defaults()
        diff = [k for k in diff if k in a or k not in defaults or b.get(k) != defaults[k]]
    return diff


def previous_state(run_dir: Path, config: dict) -> str:
    """'new', 'completed' (same config, nothing to do) or 'resume'; raises on a foreign run."""
    summary = read_summary(run_dir)
    if summary is None or "config" not in summary:
        return "new"
    diff = config_differences(summary["config"], config)
    if diff:
        shown = ", ".join(f"{k}" for k in diff[:8]) + (" ..." if len(diff) > 8 else "")
        raise RunDirError(
            f"{run_dir} holds a run with a different config (differs in: {shown}); "
            "choose another hydra.run.dir or delete that directory"
        )
    return "completed" if summary.get("status") == "completed" else "resume"


def truncate_metrics(run_dir: Path, last_step: int) -> int:
    """Keep only metrics rows with step <= last_step (atomically); returns the rows dropped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped += 1
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped
