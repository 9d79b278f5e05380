"""`scalelab-train`: the Hydra main of one training run (or, with -m, of every job of a sweep).

One step, from the command line to the jitted function:
  cli/entry.py:train -> cli/train.py:main (Hydra) -> train/run.py:run -> train/loop.py:train_loop
  -> train/step.py (the jitted train step, built by build_steps).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from scalelab import paths
from scalelab.config import ConfigError
from scalelab.configs import CONFIG_DIR
from scalelab.runfiles import METRICS, START_FILES, SUMMARY
from scalelab.runtime import watchdog
from scalelab.train.checkpoint import CheckpointError
from scalelab.train.loop import Diverged
from scalelab.train.preemption import EXIT_PREEMPTED
from scalelab.train.run import Attempt, run
from scalelab.train.store import LOCK, RunDirError, RunLock

log = logging.getLogger("scalelab")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU/GPU found" noise
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter
logging.raiseExceptions = False  # a log file on a full disk: the run reports the full disk once, not per line
for _name in ("botocore", "aiobotocore", "s3fs", "gcsfs"):  # object-store clients' per-request chatter
    logging.getLogger(_name).setLevel(logging.WARNING)

EXIT_CONFIG_ERROR = 2  # the run could not start: a config, data path, run directory or checkpoint error
EXIT_DIVERGED = 4
EXIT_STALLED = watchdog.EXIT_STALLED  # 5: no progress for train.stall_timeout; summary.json says where
# errors whose message names the key or file at fault: printed as they are, at any point of a run
KNOWN_ERRORS = (ConfigError, RunDirError, CheckpointError)


_RUN_DIR_OVERRIDE = re.compile(r"^(\+{0,2}hydra\.(?:run|sweep)\.dir)=(.+)$")


def mirror_run_dirs(overrides: list[str]) -> list[str]:
    """`hydra.run.dir=s3://...` (or `hydra.sweep.dir`) as the URL's local mirror (train/store.py).

    Hydra makes its output directory with os.makedirs (a URL would become a local `s3:/...`
    directory) and writes `.hydra/` into it: it gets the mirror instead, and the run, which knows
    the mirror's URL, uploads the run directory (`.hydra/` included) to the store.
    """
    out = []
    for item in overrides:
        match = _RUN_DIR_OVERRIDE.match(item)
        if match and paths.is_url(match.group(2)):
            item = f"{match.group(1)}={paths.mirror_dir(match.group(2))}"
        out.append(item)
    return out


def clean_failed_start(run_dir: Path, summary_too: bool = False) -> None:
    """Remove a run directory that holds only what Hydra and the refused start wrote (with
    `summary_too`, also the summary of a new run whose start failed).

    Never one whose lock a live run holds: a run that is still compiling or restoring has written
    nothing else yet either.
    """
    if not run_dir.exists():
        return
    removable = set(START_FILES) | {LOCK}
    if summary_too:
        removable.add(SUMMARY)
        metrics = run_dir / METRICS
        if metrics.exists() and metrics.stat().st_size == 0:  # opened by the failure's summary
            removable.add(METRICS)
    if not {p.name for p in run_dir.iterdir()} <= removable:
        return
    try:
        with RunLock(run_dir):  # held while removing, so that no run starts in it meanwhile
            shutil.rmtree(run_dir, ignore_errors=True)
            url = paths.mirror_url(run_dir)
            remote = paths.listing(url) if url else {}
            if remote and {name.split("/")[0] for name in remote} <= removable:  # what the failure uploaded
                paths.delete(url, sorted(remote))
    except RunDirError:
        return


def disk_full(exc: BaseException) -> str | None:
    """None, or (' (writing FILE)' or '') when `exc`, or an exception it was raised from or during,
    is ENOSPC."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return f" (writing {exc.filename})" if exc.filename else ""
        exc = exc.__cause__ or exc.__context__
    return None


def _is_main_process() -> bool:
    try:
        import jax

        return jax.process_index() == 0
    except Exception:  # noqa: BLE001 - no backend at all: this process is the only one
        return True


def _one_line(exc: BaseException) -> str:
    """The error line of a failed start: our own errors name the key or file; others add their type."""
    text = str(exc).strip()
    if not isinstance(exc, KNOWN_ERRORS):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    lines = text.splitlines() or [""]
    more = " (HYDRA_FULL_ERROR=1 shows the traceback)" if not isinstance(exc, KNOWN_ERRORS) else ""
    return lines[0] + (" ..." if len(lines) > 1 else "") + more


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    attempt = Attempt()
    try:
        summary = run(cfg, run_dir, attempt)
    except Diverged as exc:
        print(f"diverged: {exc}", file=sys.stderr)
        if in_sweep:  # the launcher records the failure and goes on with the other jobs
            raise
        sys.exit(EXIT_DIVERGED)
    except Exception as exc:
        full = disk_full(exc)
        if full is not None and not isinstance(exc, KNOWN_ERRORS):  # a write that ran out of space
            exc = RunDirError(f"no space left on device under {run_dir}{full}; free space and run the same "
                              "command to resume from the newest checkpoint")
        if attempt.started and not isinstance(exc, KNOWN_ERRORS):
            raise  # a failure mid-run: summary.json says failed, with this traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        if _is_main_process() and not isinstance(exc, RunDirError):
            # a sweep keeps a failed job's summary: its status reports the failure
            clean_failed_start(run_dir, summary_too=attempt.new and not in_sweep)
        if in_sweep or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(EXIT_CONFIG_ERROR)
    log.info("%s: %s, final_eval_loss=%.4f (%.3f bits/byte), %.1f s", paths.mirror_url(run_dir) or run_dir,
             summary["status"], summary["final_eval_loss"], summary["final_eval_bpb"], summary["wall_seconds"])


__all__ = ["EXIT_CONFIG_ERROR", "EXIT_DIVERGED", "EXIT_PREEMPTED", "EXIT_STALLED", "main"]
