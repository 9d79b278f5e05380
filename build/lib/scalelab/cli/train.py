"""`scalelab-train`: the Hydra main of one training run (or, with -m, of every job of a sweep).

One step, from the command line to the jitted function:
  cli/entry.py:train -> cli/train.py:main (Hydra) -> train/run.py:run -> train/loop.py:train_loop
  -> train/step.py (the jitted train step, built by build_steps).
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from scalelab.config import ConfigError
from scalelab.configs import CONFIG_DIR
from scalelab.runfiles import START_FILES
from scalelab.train.checkpoint import CheckpointError
from scalelab.train.loop import Diverged
from scalelab.train.preemption import EXIT_PREEMPTED
from scalelab.train.run import run
from scalelab.train.rundir import RunDirError

log = logging.getLogger("scalelab")
logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU/GPU found" noise
logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's per-save chatter

EXIT_CONFIG_ERROR = 2
EXIT_DIVERGED = 4



def clean_failed_start(run_dir: Path) -> None:
    """Remove a run directory that holds only what Hydra wrote before the run was refused."""
    if not run_dir.exists():
        return
    if {p.name for p in run_dir.iterdir()} <= START_FILES:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, run_dir)
    except (ConfigError, RunDirError, CheckpointError, Diverged) as exc:
        print(f"{'diverged' if isinstance(exc, Diverged) else 'error'}: {exc}", file=sys.stderr)
        if isinstance(exc, ConfigError):
            clean_failed_start(run_dir)
        if in_sweep:  # the launcher records the failure and goes on with the other jobs
            raise
        sys.exit(EXIT_DIVERGED if isinstance(exc, Diverged) else EXIT_CONFIG_ERROR)
    log.info("%s: %s, final_eval_loss=%.4f (%.3f bits/byte), %.1f s", run_dir, summary["status"],
             summary["final_eval_loss"], summary["final_eval_bpb"], summary["wall_seconds"])


__all__ = ["EXIT_CONFIG_ERROR", "EXIT_DIVERGED", "EXIT_PREEMPTED", "main"]
