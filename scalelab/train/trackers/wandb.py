"""Weights & Biases: one W&B run per run directory, continued across resumes.

The W&B run is named after the run directory and keeps its id in `RUN_DIR/trackers.json`, so a
resumed attempt continues it (`resume="allow"`). Its files live in `RUN_DIR/wandb/`. Without W&B
credentials (mode `auto`) it runs offline: `wandb sync RUN_DIR/wandb/offline-run-*` uploads it
later (a resumed run's later directories with `--append`). Each W&B run is its own object
(`reinit="create_new"`), so the members of a packed sweep, one process, get one W&B run each.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

import wandb

from scalelab.train import trackers

log = logging.getLogger("scalelab")


def has_credentials() -> bool:
    """An API key in the environment or a `wandb login` in ~/.netrc, for W&B's host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str | None:
    """The mode handed to wandb.init: `auto` is offline without credentials; None lets WANDB_MODE decide."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return None
    return "online" if has_credentials() else "offline"


class Wandb:
    keeps_history = True

    def __init__(self, options: dict):
        self.options = options
        self.run = None

    def start(self, run_name: str, config: dict, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        run_id = trackers.read_ids(run_dir).get("wandb", {}).get("id") or secrets.token_hex(6)
        o = self.options
        self.run = wandb.init(
            project=o["project"], entity=o["entity"], group=o["group"], tags=list(o["tags"]) or None,
            name=run_name, id=run_id, resume="allow", dir=str(run_dir), mode=resolve_mode(o["mode"]),
            config=config,
            # no console capture (it would wrap stderr, shared with the progress lines and other runs)
            settings=wandb.Settings(console="off", silent=True, reinit="create_new", x_disable_stats=True),
        )
        trackers.write_id(run_dir, "wandb", {"id": run_id, "project": o["project"]})
        if self.run.settings.mode == "offline":
            log.info("wandb: offline run %s in %s (wandb sync uploads it)", run_id, self.run.dir)

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def finish(self, summary: dict) -> None:
        self.run.summary.update(summary)
        self.run.finish(exit_code=0 if summary.get("status") == "completed" else 1)
