"""`hydra/launcher=slurm`: hydra-submitit's SLURM launcher, which takes a job for ended only once it
has left SLURM's queue.

submitit tells that a job has ended from `sacct` and keeps the first ended state it reads. A job that
is requeued (preempted, `scontrol requeue`, or submitit's own requeue on SIGUSR2) ends one run and
starts another under the same id, and a sweep has been seen to report such a job failed ("has not
produced any output (state: FAILED)") seconds after SLURM had requeued it. Here the sweep waits until
none of its jobs is pending, running or completing (`squeue`), and only then reads their results.
"""

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import filter_overrides, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher

log = logging.getLogger(__name__)


@dataclass
class ScalelabSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.scalelab_launchers.slurm.ScalelabSlurmLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="slurm_base", node=ScalelabSlurmConf, provider="scalelab")


def still_queued(job_ids) -> bool | None:
    """Whether any of `job_ids` (an array task `12_3` counts as its array `12`) is still in SLURM's
    queue; None when `squeue` cannot say (then submitit's own reading decides)."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(arrays)], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # an id SLURM has already forgotten: "Invalid job id specified"
        return False if "invalid job id" in out.stderr.lower() else None
    return bool(out.stdout.strip())


def wait_off_queue(handles, longest_poll_s: float = 3.0) -> None:
    """Until none of the submitit jobs `handles` is pending, running or completing in SLURM."""
    ids = [h.job_id for h in handles]
    poll = 0.5
    while still_queued(ids):
        time.sleep(poll)
        poll = min(1.5 * poll, longest_poll_s)


class ScalelabSlurmLauncher(SlurmLauncher):
    def _executor(self):
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params.get("max_num_timeout", 0))
        base = set(BaseQueueConf.__dataclass_fields__)
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in self.params.items()
                                      if k not in ("submitit_folder", "max_num_timeout")})
        return executor

    def launch(self, job_overrides, initial_job_idx: int):
        """One job of a SLURM array per run, as hydra-submitit launches them; their returns once all
        have left the queue."""
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        state = Singleton.get_state()
        args = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", state))
        handles = self._executor().map_array(self, *zip(*args, strict=True))
        wait_off_queue(handles)
        return [h.results()[0] for h in handles]
