"""A run directory: one writer at a time, resume only into the same run, and its copy at a URL.

* A lock file held (flock) by the live run's process 0: a second run started on the same directory
  is refused instead of interleaving two runs' files. The OS drops the lock when the process dies,
  so a run killed with SIGKILL never leaves a stale lock behind.
* A directory whose summary says `completed` with the same config is done: relaunching it (a sweep
  relaunch) returns at once. A different config in a used directory is refused, naming the keys.
* On resume, metrics rows logged after the checkpoint's step are dropped, so each step appears once.

A run directory at a URL (`hydra.run.dir=s3://bucket/run`): trained in its local mirror and
uploaded as the run goes.

Orbax writes checkpoints to local paths and gs:// only (its TensorStore path rejects s3://),
metrics.jsonl is appended row by row, summaries are replaced by rename and the run lock is a flock:
an object store has none of these. So the run works in `paths.mirror_dir(url)` and:

* `pull`, at start under the lock, makes the mirror equal to the store's run directory: the store
  is the truth, whatever an earlier attempt on this machine left behind. A checkpoint whose file
  list (`checkpoint_files/<step>.json`) is not in the store is an unfinished upload and is not
  restored from. Hydra's `.hydra/` of this launch is kept.
* `push`, after each checkpoint is complete and when the run ends, uploads the files that changed,
  each whole in one PUT: a checkpoint's files first, then the run's other files (metrics.jsonl),
  then the checkpoint's file list (the commit point), `summary.json` last; checkpoints Orbax
  deleted (`checkpoint.keep`) are deleted from the store, file list first. A kill at any point
  leaves the store with complete, listed checkpoints and metrics rows up to at least the newest one
  (rows past it are dropped on resume), which is what a resume needs.
* The lock is the mirror's: it refuses a second run of the same URL on this machine, not on
  another. One writer per run directory URL is the user's to ensure (each sweep job has its own).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from pathlib import Path

from scalelab import paths
from scalelab.config import schema_defaults
from scalelab.runfiles import CHECKPOINT_FILES, CHECKPOINTS, HYDRA, METRICS, SUMMARY
from scalelab.train.runlog import read_summary

log = logging.getLogger("scalelab")

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

    @property
    def held(self) -> bool:
        return self._fd is not None

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


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ, ignoring the keys a resume may change.

    A key the old config lacks (a run recorded before the key existed) counts as equal when the
    new config holds the schema's default for it: upgrading scalelab does not orphan run dirs.
    With the same `optimizer.lr_law` on both sides, `optimizer.lr` follows from it (a composed
    config holds a placeholder there, a run records the lr the law gave it) and is not compared; with
    the same `optimizer.lr_scale`, a recorded lr is the composed one times the scale."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    scale = b.get("optimizer.lr_scale", 1.0)
    if b.get("optimizer.lr_law") and a.get("optimizer.lr_law") == b["optimizer.lr_law"]:
        keys = [k for k in keys if k != "optimizer.lr"]
    elif scale != 1 and a.get("optimizer.lr_scale") == scale and isinstance(b.get("optimizer.lr"), float | int):
        if a.get("optimizer.lr") == b["optimizer.lr"] * scale:
            keys = [k for k in keys if k != "optimizer.lr"]
    diff = [k for k in keys if a.get(k) != b.get(k)
            and not any(k == p or k.startswith(p + ".") for p in RESUMABLE_CHANGES)]
    if any(k not in a for k in diff):
        defaults = flatten(schema_defaults())  # what a key added since a run started means
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


def checkpoint_names(step: int) -> tuple[str, str]:
    """The prefix of checkpoint `step`'s files and the name of its file list, within a run directory."""
    return f"{CHECKPOINTS}/{step}/", f"{CHECKPOINT_FILES}/{step}.json"


# ---- a run directory at a URL -----------------------------------------------------------------
def locate(run_dir) -> tuple[Path, str | None]:
    """(the local directory a run works in, the URL it mirrors or None) for a path or a URL."""
    if paths.is_url(run_dir):
        return paths.mirror_dir(str(run_dir)), str(run_dir)
    return Path(run_dir), paths.mirror_url(run_dir)


def _listed_steps(names) -> set[str]:
    prefix = CHECKPOINT_FILES + "/"
    return {n[len(prefix):-len(".json")] for n in names if n.startswith(prefix) and n.endswith(".json")}


def _wanted(name: str, listed: set[str]) -> bool:
    """A run file that belongs in the store: not a lock or temporary file, nor an unfinished checkpoint."""
    parts = name.split("/")
    if parts[-1].startswith(".") or ".orbax-checkpoint-tmp" in name:
        return False
    return parts[0] != CHECKPOINTS or (len(parts) > 2 and parts[1] in listed)


def _order(name: str) -> int:
    """Upload order: checkpoint files, the run's other files, checkpoint lists (commit), the summary."""
    return {CHECKPOINTS: 0, CHECKPOINT_FILES: 2}.get(name.split("/")[0], 3 if name == SUMMARY else 1)


class RunMirror:
    """The upload and download of one run directory between its URL and its local mirror."""

    def __init__(self, url: str, local: Path):
        self.url, self.local = url, Path(local)
        self._sent: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) as in the store

    def pull(self) -> None:
        remote = paths.listing(self.url)
        listed = _listed_steps(remote)
        wanted = {n: s for n, s in remote.items() if _wanted(n, listed) and n.split("/")[0] != HYDRA}
        checkpoints = self.local / CHECKPOINTS
        for step_dir in checkpoints.iterdir() if checkpoints.is_dir() else []:
            if step_dir.name not in listed:  # unlisted in the store: never restored from
                shutil.rmtree(step_dir, ignore_errors=True)
        for name in paths.local_files(self.local):
            if name not in wanted and name.split("/")[0] != HYDRA and not name.split("/")[-1].startswith("."):
                (self.local / name).unlink(missing_ok=True)
        paths.download(self.url, self.local, wanted)
        self._sent = {n: self._stat(n) for n in wanted}
        if wanted:
            log.info("pulled %s (%d files, checkpoints %s)", self.url, len(wanted), sorted(listed, key=int))

    def _stat(self, name: str) -> tuple[int, int]:
        st = (self.local / name).stat()
        return st.st_size, st.st_mtime_ns

    def push(self) -> None:
        local = paths.local_files(self.local)
        listed = _listed_steps(local)
        changed = []
        for name in sorted((n for n in local if _wanted(n, listed)), key=lambda n: (_order(n), n)):
            try:
                stat = self._stat(name)
            except FileNotFoundError:  # deleted meanwhile (an old checkpoint): gone at the next push
                continue
            if self._sent.get(name) != stat:
                changed.append((name, stat))
        for name, stat in changed:
            try:
                paths.upload(self.local, self.url, [name])
            except FileNotFoundError:
                continue
            self._sent[name] = stat
        gone = [n for n in self._sent if n not in local or not _wanted(n, listed)]
        lists = [n for n in gone if n.startswith(CHECKPOINT_FILES + "/")]
        for batch in (lists, [n for n in gone if n not in lists]):  # a checkpoint's list goes first
            paths.delete(self.url, batch)
            for name in batch:
                self._sent.pop(name, None)
