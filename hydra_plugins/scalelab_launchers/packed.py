"""`hydra/launcher=packed`: the sweep's jobs that share a step program train as one vmapped program,
in this process (see scalelab/sweep/packed.py for what may differ inside a group).

    scalelab-train -m hydra/launcher=packed optimizer.lr=1e-3,3e-3,1e-2 train.seed=0,1 model=p15k

Each job still gets its own run directory with Hydra's `.hydra/` files, `train.log`, metrics,
summary and checkpoints; `hydra.launcher.max_members` caps a group (0: from the device's memory) and
`hydra.launcher.steps_per_call` sets how many steps one jitted call runs (default 16).
"""


import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.scalelab_launchers.packed.PackedLauncher"
    max_members: int = 0  # runs per packed group; 0: as many as the device's memory holds (ledger.step_memory)
    steps_per_call: int = 16  # training steps per jitted call (a scan over K batches); scalelab.train.packed.STEPS_PER_CALL


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="scalelab")


class SharedRunDir(ValueError):
    """Two jobs of one launch would train different configs in one run directory (nothing trained)."""


def refuse_shared_run_dirs(returns, jobs) -> None:
    from omegaconf import OmegaConf

    from scalelab.sweep.plan import colliding_jobs

    clashes = colliding_jobs([(" ".join(filter_overrides(ret.overrides or [])), str(job.run_dir),
                               OmegaConf.to_container(job.cfg, resolve=True)) for ret, job in zip(returns, jobs, strict=True)])
    if clashes:
        raise SharedRunDir("jobs of this sweep would share a run directory (make hydra.sweep.subdir name what "
                           "varies); nothing was trained:\n  " + "\n  ".join(clashes))


def _collect(cfg: DictConfig):
    """The task Hydra runs for each job here: only note its config and run directory."""
    return copy.deepcopy(cfg), Path(HydraConfig.get().runtime.output_dir)


def prepare_jobs(config: DictConfig, hydra_context, job_overrides, indices, job_id=None) -> list:
    """Hydra's own per-job set-up (config, output dir, .hydra/ files) of each job, without training:
    their JobReturns, each with (config, run directory) as its return value. `indices`: the jobs'
    numbers in the sweep; `job_id`: their `hydra.job.id` (default: the number)."""
    returns = []
    for idx, overrides in zip(indices, job_overrides, strict=True):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx if job_id is None else job_id
            sweep_config.hydra.job.num = idx
        returns.append(run_job(hydra_context=hydra_context, task_function=_collect, config=sweep_config,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return returns


def packed_jobs(returns) -> list:
    """The `scalelab.sweep.packed.Job` of each prepared job (`prepare_jobs`)."""
    from scalelab.sweep.packed import Job

    return [Job(cfg=ret.return_value[0], run_dir=ret.return_value[1]) for ret in returns]


def set_outcomes(returns, jobs) -> list:
    """Each JobReturn completed, or failed with its job's error; the returns."""
    for ret, job in zip(returns, jobs, strict=True):
        if job.error is None:
            ret.status, ret.return_value = JobStatus.COMPLETED, None
        else:
            ret.status, ret._return_value = JobStatus.FAILED, job.error
    return returns


class PackedLauncher(Launcher):
    # the IsoFLOP sweeper hands a packing launcher its completed jobs too (they keep their groups)
    packs_jobs = True

    def __init__(self, max_members: int = 0, steps_per_call: int = 16) -> None:
        super().__init__()
        if steps_per_call < 1:
            raise ValueError(f"hydra.launcher.steps_per_call must be at least 1, got {steps_per_call}")
        self.max_members, self.steps_per_call = max_members, steps_per_call
        self.config: DictConfig | None = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides, initial_job_idx: int) :
        from scalelab.sweep.packed import run_jobs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Packing %d jobs", len(job_overrides))
        returns = prepare_jobs(self.config, self.hydra_context, job_overrides,
                               range(initial_job_idx, initial_job_idx + len(job_overrides)))
        jobs = packed_jobs(returns)
        refuse_shared_run_dirs(returns, jobs)
        logging.getLogger("scalelab").setLevel(logging.INFO)
        run_jobs(jobs, self.max_members, self.steps_per_call)
        return set_outcomes(returns, jobs)
