"""Packed sweeps: a sweep's jobs grouped by the step program they share, trained group by group
in this process (`hydra/launcher=packed`).

Inside a group, jobs may differ in anything the train step takes as an input: `optimizer.*`
(learning rate, weight decay, clipping, betas, eps), `schedule.*` (kind, warmup, decay, final
ratio), `train.seed`, `data.tokens` (run length), `budget`, `train.log_every`,
`train.eval_every`, `checkpoint.*`. Anything else splits groups: the model, `data.*` other than
`tokens` and `prefetch`, `train.batch_size`, `train.precision`, `train.grad_accum`,
`train.remat`, `train.eval_tokens` and the mesh. Groups hold at most `max_members` runs, filled
with runs of equal length first, so that members finish together.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import jax

log = logging.getLogger("scalelab")


@dataclass
class Job:
    """One job of a sweep: its composed config and run directory; after training, its outcome."""

    cfg: object
    run_dir: Path
    summary: dict | None = None
    error: BaseException | None = None


# the most members one packed group holds, however small they are (compile time grows with them)
MAX_MEMBERS = 64


def device_memory() -> int:
    """Bytes packed members may fill on this process's first device: 90% of an accelerator's memory
    limit, or a quarter of the host's memory on CPU (which the rest of the machine shares)."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(0.9 * stats["bytes_limit"])
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def member_memory(run):
    """The ledger's estimate of one member's training step (`ledger.StepMemory`): its train state
    (measured from the state's abstract shapes), fp32 gradients and one microbatch's activations."""
    from scalelab import ledger

    state = jax.eval_shape(run.steps.init_state, 0)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    micro_tokens = run.train.batch_size * run.shape.seq_len // max(run.grad_accum, 1)
    spec = run.fns.spec
    return ledger.step_memory(run.shape, micro_tokens, state_bytes, scores=spec.attention in ("xla", "blockwise"),
                              remat=spec.remat)


def members_that_fit(member_bytes: int, device_bytes: int) -> int:
    """Members of `member_bytes` one device of `device_bytes` holds (1 when one alone does not fit:
    such a member trains on its own)."""
    return max(1, min(MAX_MEMBERS, int(device_bytes // max(member_bytes, 1))))


def spreads_members(mesh) -> bool:
    """Whether a job's members go one whole run per device: on one process, with the default `mesh`
    group (no FSDP or tensor parallelism asked for; a config group or a run's recorded dict), each
    device trains its own members."""
    size = mesh.get if isinstance(mesh, dict) else lambda axis: getattr(mesh, axis)
    return jax.process_count() == 1 and size("fsdp") == 1 and size("tensor") == 1 and size("data") in (-1, 1)


def members_mesh():
    """All devices of this process along one `data` axis: where spread members live."""
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.array(jax.local_devices()), ("data",))


def plan_groups(runs: list, max_members: int = 0, device_bytes: int | None = None) -> list[list]:
    """Runs grouped by their step program, equal lengths together, at most `max_members` a group
    (0: as many as `device_bytes` hold by the ledger's estimate; default: this process's device)."""
    from scalelab.train.packed import group_key

    by_key = defaultdict(list)
    for r in runs:
        by_key[group_key(r)].append(r)
    groups = []
    for members in by_key.values():
        cap = max_members
        if not cap:
            device_bytes = device_bytes or device_memory()
            estimate = member_memory(members[0])
            cap = members_that_fit(estimate.total, device_bytes)
            log.info("packing %s: %.1f MiB a member (state %.1f, gradients %.1f, activations %.1f) of %.0f MiB: "
                     "%d a group%s", members[0].origin.model_name, estimate.total / 2**20, estimate.state / 2**20,
                     estimate.grads / 2**20, estimate.activations / 2**20, device_bytes / 2**20, cap,
                     "" if estimate.total <= device_bytes else " (too large to share the device: each trains alone)")
        members = sorted(members, key=lambda r: r.plan.steps)
        groups += [members[i:i + cap] for i in range(0, len(members), cap)]
    return groups


def groups_by_name(runs: list, names: list[list[str]]) -> list[list]:
    """`runs` grouped as `names` (lists of run directory names) says: a plan made elsewhere (the
    submitting process of a cluster sweep), kept exactly; runs it does not name are left out."""
    by_name = {r.run_dir.name: r for r in runs}
    return [group for group in ([by_name[n] for n in g if n in by_name] for g in names) if group]


def run_jobs(jobs: list[Job], max_members: int = 0, steps_per_call: int | None = None,
             groups: list[list[str]] | None = None) -> list[Job]:
    """Build every job's run (a job that cannot start fails alone), then train the groups (`groups`:
    as planned elsewhere, by run directory name; else `plan_groups`).

    On one process with the default mesh, whole runs go one per device: with at least as many
    groups as devices, each device ("lane") trains its share of the groups, balanced by FLOPs, in
    a thread of its own; with fewer, each group's members are spread over all devices."""
    from scalelab.train.preemption import PreemptionGuard

    if jax.config.jax_compilation_cache_dir:  # as a solo run does: cache every program, however small,
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # so a relaunch loads them
    built = build_jobs(jobs)
    runs = [run for _, run in built.values()]
    groups = plan_groups(runs, max_members) if groups is None else groups_by_name(runs, groups)
    with PreemptionGuard() as guard:
        lanes = assign_lanes(groups, jax.local_device_count())
        if len(lanes) > 1:
            threads = [threading.Thread(target=_run_lane, args=(lane, k, built, guard, steps_per_call), name=f"lane{k}")
                       for k, lane in enumerate(lanes)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            mesh = members_mesh()
            for group in groups:
                if guard.requested:  # the groups not started yet stay as they are: a relaunch runs them
                    break
                _train_group(group, built, guard, mesh if spreads_members(group[0].config["mesh"]) else None, steps_per_call)
        if guard.requested:
            guard.hand_over()
    return jobs


def build_jobs(jobs: list[Job]) -> dict:
    """{run directory name: (job, run)} of the jobs whose run builds (one that cannot fails alone)."""
    from scalelab.runtime import distributed

    built = {}
    for job in jobs:
        try:
            distributed.initialize(job.cfg.distributed)
            devices = jax.local_devices()[:1] if spreads_members(job.cfg.mesh) else None
            built[job.run_dir.name] = (job, _build(job, devices))
        except Exception as exc:  # noqa: BLE001 - a bad config fails its own job only
            job.error = exc
            log.error("%s: %s", job.run_dir.name, exc)
    return built


def _build(job: Job, devices):
    from scalelab import paths
    from scalelab.config import ConfigError
    from scalelab.train.build import build_run

    if paths.mirror_url(job.run_dir):  # packed members write their run dirs locally, uploading none
        raise ConfigError("hydra.sweep.dir", f"{paths.mirror_url(job.run_dir)}: packed sweeps need a local "
                          "(or shared-filesystem) sweep directory; object-store URLs work with the local launcher")
    return build_run(job.cfg, job.run_dir, devices)


# a step of a tiny model costs about as much as this many FLOPs of a large one (per-op overhead):
# the lane balance counts each step at least this
STEP_FLOOR_FLOPS = 1.5e8


def group_seconds(run) -> float:
    """A run's share of a lane's time, in FLOPs: its steps, each at least STEP_FLOOR_FLOPS."""
    per_step = run.counts.flops_per_token * run.plan.tokens_per_step
    return run.plan.steps * max(per_step, STEP_FLOOR_FLOPS)


def assign_lanes(groups: list[list], devices: int) -> list[list[list]]:
    """Groups per device, longest first onto the least loaded device; one lane when groups are
    fewer than devices (their members are then spread over every device instead)."""
    spreadable = [g for g in groups if spreads_members(g[0].config["mesh"])]
    if devices < 2 or len(spreadable) < devices or len(spreadable) != len(groups):
        return [groups]
    cost = lambda g: sum(group_seconds(r) for r in g)
    lanes, loads = [[] for _ in range(devices)], [0.0] * devices
    for g in sorted(groups, key=cost, reverse=True):
        k = loads.index(min(loads))
        lanes[k].append(g)
        loads[k] += cost(g)
    return lanes


def job_lanes(groups: list[list], per_job: int = 1) -> list[list[list]]:
    """The groups of a cluster sweep's jobs: `per_job` groups a job, balanced by FLOPs (longest first
    onto the least loaded job), in plan order within each job."""
    if per_job <= 1:
        return [[g] for g in groups]
    cost = lambda g: sum(group_seconds(r) for r in g)
    n_jobs = -(-len(groups) // per_job)
    lanes, loads = [[] for _ in range(n_jobs)], [0.0] * n_jobs
    for k in sorted(range(len(groups)), key=lambda k: cost(groups[k]), reverse=True):
        open_lanes = [j for j in range(n_jobs) if len(lanes[j]) < per_job]
        j = min(open_lanes, key=lambda j: loads[j])
        lanes[j].append(k)
        loads[j] += cost(groups[k])
    return [[groups[k] for k in sorted(lane)] for lane in lanes]


def _run_lane(lane: list[list], k: int, built: dict, guard, steps_per_call: int | None) -> None:
    device = jax.local_devices()[k]
    for group in lane:
        if guard.requested:
            break
        if k:  # rebuild the runs on this lane's device (nothing compiled yet)
            group = [_build(built[r.run_dir.name][0], [device]) for r in group]
        _train_group(group, built, guard, None, steps_per_call)


def _train_group(group: list, built: dict, guard, member_mesh, steps_per_call: int | None = None) -> None:
    log.info("packed group of %d run(s) of %s on %s", len(group), group[0].origin.model_name,
             "all devices" if member_mesh is not None else group[0].mesh.devices.flat[0])
    try:
        results = train_group_logged(group, member_mesh, guard, steps_per_call)
    except Exception as exc:  # noqa: BLE001 - the members' summaries say failed; other groups go on
        log.error("packed group of %s failed: %s", group[0].origin.model_name, exc)
        results = {}
    for run in group:
        job = built[run.run_dir.name][0]
        job.summary = results.get(run.run_dir.name)
        if job.summary is None or job.summary.get("status") != "completed":
            status = (job.summary or {}).get("status", "failed")
            job.error = RuntimeError(f"{run.run_dir.name}: {status}: "
                                     f"{((job.summary or {}).get('error') or {}).get('message', '')}")


class _ThisThread(logging.Filter):
    def __init__(self):
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record) -> bool:
        return record.thread == self.ident


def train_group_logged(group: list, member_mesh=None, guard=None, steps_per_call: int | None = None) -> dict:
    """`train_packed`, with the group's log lines (this thread's) also in every member's train.log."""
    from scalelab.runfiles import TRAIN_LOG
    from scalelab.train.packed import train_packed

    handlers = []
    for run in group:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run.run_dir / TRAIN_LOG)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        handler.addFilter(_ThisThread())
        logging.getLogger("scalelab").addHandler(handler)
        handlers.append(handler)
    try:
        return train_packed(group, member_mesh, guard, steps_per_call)
    finally:
        for handler in handlers:
            logging.getLogger("scalelab").removeHandler(handler)
            handler.close()
