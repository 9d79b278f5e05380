"""A run directory at a URL (`hydra.run.dir=s3://bucket/run`): trained in its local mirror and
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

import logging
import shutil
from pathlib import Path

from scalelab import paths
from scalelab.runfiles import CHECKPOINT_FILES, CHECKPOINTS, HYDRA, SUMMARY

log = logging.getLogger("scalelab")


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
