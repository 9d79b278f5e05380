"""What a run leaves behind: metrics.jsonl and summary.json (and, through scalelab/train/trackers/,
TensorBoard, W&B or MLflow).

Only process 0 writes. `summary.json` is rewritten atomically (temp file + rename) at start
(`status: running`), and at the end with the final status, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path

from scalelab.runfiles import METRICS, SUMMARY

PACKAGES = ("scalelab", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "hydra-core", "numpy")


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows (Orbax threads create files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # elsewhere the only way to read it is to set it (briefly, to the strictest)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    # mkstemp creates 0600; a run's files are for the group too, as open() would make them
    os.fchmod(fd, 0o666 & ~_umask())
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def _clean(value):
    """JSON has no NaN/Inf: write them as strings so the file stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_summary(run_dir, fields: dict) -> None:
    """summary.json, replaced atomically (NaN and Inf as strings: JSON has neither)."""
    write_json_atomic(Path(run_dir) / SUMMARY, {k: _clean(v) for k, v in fields.items()})


def read_summary(run_dir) -> dict | None:
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


class RunLog:
    """Writer of one run's files; a no-op on processes other than 0. `trackers` (a
    `scalelab.train.trackers.Trackers`, or None) get each row too, and the last summary on close."""

    def __init__(self, run_dir, enabled: bool = True, trackers=None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics = None
        self._trackers = trackers if enabled else None
        self._last_summary: dict = {}
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.run_dir / METRICS, "a")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self._metrics.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._metrics.flush()
        if self._trackers is not None:
            self._trackers.log(row)

    def summary(self, fields: dict) -> None:
        if self.enabled:
            self._last_summary = fields
            write_summary(self.run_dir, fields)

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._trackers is not None:
            self._trackers.finish(self._last_summary)
            self._trackers = None
