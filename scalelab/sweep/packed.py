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


def default_max_members(run) -> int:
    """As many members as fit in a quarter of the device's memory (state and activations, roughly)."""
    stats = jax.devices()[0].memory_stats() or {}
    available = stats.get("bytes_limit")
    if not available:
        import os

        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    state = 4 * 4 * run.counts.params_total  # fp32 parameters, two Adam moments, gradients
    shape, batch = run.shape, run.train.batch_size
    activations = 4 * batch * shape.seq_len * shape.d_model * shape.n_layers * 24 // max(run.grad_accum, 1)
    return max(1, min(64, int(available // 4 // (state + activations))))


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


def plan_groups(runs: list, max_members: int = 0) -> list[list]:
    """Runs grouped by their step program, equal lengths together, at most `max_members` a group."""
    from scalelab.train.packed import group_key

    by_key = defaultdict(list)
    for r in runs:
        by_key[group_key(r)].append(r)
    groups = []
    for members in by_key.values():
        cap = max_members or default_max_members(members[0])
        members = sorted(members, key=lambda r: r.plan.steps)
        groups += [members[i:i + cap] for i in range(0, len(members), cap)]
    return groups


def run_jobs(jobs: list[Job], max_members: int = 0, steps_per_call: int | None = None) -> list[Job]:
    """Build every job's run (a job that cannot start fails alone), then train the groups.

    On one process with the default mesh, whole runs go one per device: with at least as many
    groups as devices, each device ("lane") trains its share of the groups, balanced by FLOPs, in
    a thread of its own; with fewer, each group's members are spread over all devices."""
    from scalelab.runtime import distributed
    from scalelab.train.preemption import PreemptionGuard

    if jax.config.jax_compilation_cache_dir:  # as a solo run does: cache every program, however small,
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # so a relaunch loads them
    built = {}
    for job in jobs:
        try:
            distributed.initialize(job.cfg.distributed)
            devices = jax.local_devices()[:1] if spreads_members(job.cfg.mesh) else None
            built[job.run_dir.name] = (job, _build(job, devices))
        except Exception as exc:  # noqa: BLE001 - a bad config fails its own job only
            job.error = exc
            log.error("%s: %s", job.run_dir.name, exc)
    groups = plan_groups([run for _, run in built.values()], max_members)
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
