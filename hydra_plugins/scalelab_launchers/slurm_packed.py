"""`hydra/launcher=slurm_packed`: a packed sweep on a SLURM cluster. The groups are planned here, as
the local packed launcher plans them (scalelab/sweep/packed.py), with the device memory of the jobs'
nodes; each group (or `groups_per_job` of them) becomes one SLURM job, submitted through submitit,
which trains its groups in one process, spread over the job's devices as lanes.

    scalelab-train -m hydra/launcher=slurm_packed hydra.launcher.partition=gpu \\
        hydra.launcher.gpus_per_node=1 hydra.launcher.device_memory_gb=80 ...

Every member is a normal run (its own directory, summary and checkpoints). Relaunching the same
command submits only the groups with a member left to train, and those resume in step; a group's
job that is cancelled fails its members alone; SIGUSR2 or `scontrol requeue` saves the group and
submitit requeues it. `scalelab status SWEEP` lists the members with their job ids.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import configure_log, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

from hydra_plugins.scalelab_launchers.packed import (
    packed_jobs,
    prepare_jobs,
    refuse_shared_run_dirs,
    set_outcomes,
)
from hydra_plugins.scalelab_launchers.slurm import ScalelabSlurmLauncher, wait_off_queue

log = logging.getLogger(__name__)

PACKING_KEYS = ("max_members", "steps_per_call", "device_memory_gb", "groups_per_job")


@dataclass
class SlurmPackedConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.scalelab_launchers.slurm_packed.SlurmPackedLauncher"
    max_members: int = 0  # runs per group; 0: as many as one device of the jobs' nodes holds
    steps_per_call: int = 16  # training steps per jitted call
    # the memory of one device of the nodes the jobs run on, in GB (e.g. 80 for an H100); needed
    # when the jobs ask for GPUs; CPU jobs size their groups from half of mem_gb
    device_memory_gb: Optional[float] = None  # noqa: UP045 - OmegaConf reads the annotation
    groups_per_job: int = 1  # groups one SLURM job trains (over its devices as lanes)


ConfigStore.instance().store(group="hydra/launcher", name="slurm_packed_base", node=SlurmPackedConf,
                             provider="scalelab")


def asks_for_gpus(params: dict) -> bool:
    return bool(params.get("gpus_per_node") or params.get("gpus_per_task") or "gpu" in str(params.get("gres") or ""))


class SlurmPackedLauncher(ScalelabSlurmLauncher):
    packs_jobs = True  # the IsoFLOP sweeper hands it completed jobs too (they keep their groups)

    def __init__(self, **params: Any) -> None:
        packing = {k: params.pop(k) for k in PACKING_KEYS if k in params}
        super().__init__(**params)
        self.max_members = int(packing.get("max_members") or 0)
        self.steps_per_call = int(packing.get("steps_per_call") or 16)
        self.groups_per_job = int(packing.get("groups_per_job") or 1)
        memory = packing.get("device_memory_gb")
        if self.steps_per_call < 1 or self.groups_per_job < 1 or self.max_members < 0:
            raise ValueError("hydra.launcher.steps_per_call and hydra.launcher.groups_per_job must be at least 1, "
                             f"hydra.launcher.max_members at least 0; got {packing}")
        if memory is None and asks_for_gpus(self.params) and not self.max_members:
            raise ValueError("hydra.launcher.device_memory_gb: the jobs ask for GPUs; give the memory of one "
                             "(e.g. 80 for an H100) so that the groups are sized to it, or set hydra.launcher.max_members")
        if memory is not None and float(memory) <= 0:
            raise ValueError(f"hydra.launcher.device_memory_gb must be positive; got {memory}")
        self.device_bytes = (int(0.9 * float(memory) * 1e9) if memory is not None
                             else int(0.5 * self.params["mem_gb"] * 2**30) if self.params.get("mem_gb") else None)

    # -- in the job ---------------------------------------------------------------------------

    def __call__(self, job_overrides: list, indices: list, groups: list, singleton_state: dict) -> list:
        """One SLURM job: train `groups` (run directory names) of the jobs `job_overrides`; each
        job's (status, error message)."""
        import submitit

        from scalelab.sweep.packed import run_jobs

        Singleton.set_state(singleton_state)
        setup_globals()
        returns = prepare_jobs(self.config, self.hydra_context, job_overrides, indices,
                               job_id=submitit.JobEnvironment().job_id)
        jobs = packed_jobs(returns)
        logging.getLogger("scalelab").setLevel(logging.INFO)
        run_jobs(jobs, 0, self.steps_per_call, groups=groups)
        return [("completed", None) if job.error is None else ("failed", str(job.error)) for job in jobs]

    # -- in the sweep's process ------------------------------------------------------------------

    def launch(self, job_overrides, initial_job_idx: int):
        from omegaconf import OmegaConf

        from scalelab.sweep.packed import build_jobs, job_lanes, plan_groups
        from scalelab.sweep.plan import completed_with_config
        from scalelab.sweep.status import record_cluster_jobs

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        indices = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        returns = prepare_jobs(self.config, self.hydra_context, job_overrides, indices)
        jobs = packed_jobs(returns)
        refuse_shared_run_dirs(returns, jobs)
        logging.getLogger("scalelab").setLevel(logging.INFO)
        built = build_jobs(jobs)
        groups = plan_groups([run for _, run in built.values()], self.max_members, self.device_bytes)
        place = {job.run_dir.name: k for k, job in enumerate(jobs)}
        submissions = []
        for lane in job_lanes(groups, self.groups_per_job):
            members = [place[r.run_dir.name] for g in lane for r in g]
            if all(completed_with_config(jobs[k].run_dir, OmegaConf.to_container(jobs[k].cfg, resolve=True))
                   for k in members):
                continue  # nothing left to train: no job
            names = [[r.run_dir.name for r in g] for g in lane]
            submissions.append((members, names))
        if submissions:
            self._submit(submissions, jobs, job_overrides, indices, sweep_dir, record_cluster_jobs)
        return set_outcomes(returns, jobs)

    def _submit(self, submissions, jobs, job_overrides, indices, sweep_dir, record) -> None:
        """One SLURM job per entry of `submissions` ((job numbers, groups)); waits for them and sets
        each job's error from its SLURM job's outcome (a job that died fails its members only)."""
        executor = self._executor()
        state = Singleton.get_state()
        handles = executor.map_array(self, [[list(job_overrides[k]) for k in m] for m, _ in submissions],
                                     [[indices[k] for k in m] for m, _ in submissions],
                                     [names for _, names in submissions], [state] * len(submissions))
        record(sweep_dir, [(h.job_id, [jobs[k].run_dir.name for k in m]) for h, (m, _) in zip(handles, submissions)])
        for handle, (members, names) in zip(handles, submissions, strict=True):
            log.info("SLURM job %s: %d group(s), %d member(s)", handle.job_id, len(names), len(members))
        wait_off_queue(handles)
        for handle, (members, _) in zip(handles, submissions, strict=True):
            try:
                outcomes = handle.results()[0]
            except Exception as exc:  # noqa: BLE001 - cancelled, killed or failed: its members only
                last = (str(exc).strip().splitlines() or [""])[-1]
                outcomes = [("failed", f"SLURM job {handle.job_id}: {type(exc).__name__}: {last}")] * len(members)
            for k, (status, message) in zip(members, outcomes, strict=True):
                if status != "completed" and jobs[k].error is None:
                    jobs[k].error = RuntimeError(message)

