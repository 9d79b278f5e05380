"""Multi-process JAX: join the job's processes into one `jax.distributed` run, once per process.

Where a cluster says how the job is laid out, JAX reads it itself: SLURM (inside `srun`, as under
submitit: SLURM_NTASKS > 1) and Cloud TPU pods. Elsewhere `distributed.coordinator`,
`distributed.num_processes` and `distributed.process_id` say it. A single process needs nothing.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def cluster_detected() -> str | None:
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in env:
        return "slurm"
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in hosts:
        return "tpu"
    return None


def scheduler_job() -> str | None:
    """The SLURM job this process runs in, as squeue and submitit name it (`12_3` for task 3 of
    array 12), or None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def initialize(dist_cfg) -> None:
    global _initialized
    if _initialized:
        return
    explicit = dist_cfg.coordinator is not None or (dist_cfg.num_processes or 1) > 1
    if explicit:
        if dist_cfg.coordinator is None or dist_cfg.num_processes is None or dist_cfg.process_id is None:
            from scalelab.config import ConfigError

            raise ConfigError("distributed", "set all of distributed.coordinator, num_processes and process_id")
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(dist_cfg.coordinator, dist_cfg.num_processes, dist_cfg.process_id)
    elif cluster_detected():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize()
    else:
        return
    _initialized = True
