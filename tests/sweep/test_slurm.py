"""Sweeps on a real SLURM cluster: the single-node localhost cluster of scripts/slurm/start-slurm.sh.

A session fixture starts the cluster (munge, MariaDB + slurmdbd for `sacct`, slurmctld, slurmd;
installing the Debian packages if missing) and stops every daemon by its PID at the end. It skips
only when it cannot run at all: not root, or apt-get cannot install the packages.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "scripts" / "slurm" / "start-slurm.sh"
STOP = REPO / "scripts" / "slurm" / "stop-slurm.sh"
SLURM_DIR = os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci")
TRAIN = str(Path(sys.executable).parent / "scalelab-train")
SMALL = ["data.seq_len=32", "train.batch_size=8", "train.eval_tokens=512", "train.progress=false",
         "train.log_every=10"]
# the IsoFLOP sweep of tests/test_sweep.py: 3 jobs (p50k @ 8e9 and 1.5e10, p150k @ 1.5e10)
ISO = ["hydra/sweeper=isoflop", "hydra.sweeper.budgets=[8e9,1.5e10]", "hydra.sweeper.models=[p50k,p150k]",
       "hydra.sweeper.tokens_per_param=[0.05,100]", *SMALL]
LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=4"]


def _daemon_pids() -> dict[str, int]:
    pids = {}
    for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb", "munged"):
        path = Path(SLURM_DIR) / "run" / f"{name}.pid"
        if path.exists() and path.read_text().strip().isdigit():
            pids[name] = int(path.read_text())
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a daemon that just exited stays a zombie until PID 1 reaps it
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


@pytest.fixture(scope="session")
def slurm_cluster(request):
    if os.geteuid() != 0:
        pytest.skip("the localhost SLURM cluster needs root: start-slurm.sh installs packages and starts daemons")
    env = dict(os.environ, SLURM_CI_DIR=SLURM_DIR, WITH_DBD="1")
    t0 = time.time()
    started = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=900)
    seconds = time.time() - t0
    if started.returncode == 3:
        pytest.skip(f"apt-get cannot install the SLURM packages here: {started.stdout[-500:]} {started.stderr[-500:]}")
    pids = _daemon_pids()

    def stop():
        for job in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split():
            subprocess.run(["scancel", job], capture_output=True)
        subprocess.run(["bash", str(STOP)], env=env, capture_output=True, text=True, timeout=120)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in pids.values()):
            time.sleep(0.2)
        left = {n: p for n, p in pids.items() if _alive(p)}
        assert not left, f"daemons still running after stop-slurm.sh: {left}"

    request.addfinalizer(stop)
    assert started.returncode == 0, f"start-slurm.sh failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
    assert set(pids) == {"slurmd", "slurmctld", "slurmdbd", "mariadb", "munged"}, pids
    print(f"\nSLURM cluster started in {seconds:.1f} s", file=sys.stderr)
    return {"node": socket.gethostname().split(".")[0], "start_seconds": seconds}


def run_env(**extra) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    # one compilation cache for every run of these tests (the jobs of a sweep share it in any case)
    env["JAX_COMPILATION_CACHE_DIR"] = str(Path(os.environ["SCALELAB_CACHE"]).resolve() / "jax-test-cache")
    env.update(extra)
    return env


def scalelab_train(*args, cwd, timeout=600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    r = subprocess.run([TRAIN, *args], cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=timeout)
    return r, time.time() - t0


def array_tasks(sweep_dir: Path) -> set[str]:
    """SLURM job ids of the jobs submitit submitted for this sweep: `7_0` for an array's tasks, `7`
    for a single job (submitit gives each its own folder holding the job's logs)."""
    return {p.name for p in (sweep_dir / ".submitit").iterdir()
            if re.fullmatch(r"\d+(_\d+)?", p.name) and any(p.glob("*_log.out"))}


def sacct(job_ids, expect: int, timeout: float = 30.0) -> dict[str, tuple[str, str]]:
    """{job id: (state, node)}, polled until every job has a final state (sacct lags the jobs)."""
    ids = sorted(job_ids)
    deadline = time.time() + timeout
    while True:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,NodeList", "-j",
                              ",".join(sorted({i.split("_")[0] for i in ids}))],
                             capture_output=True, text=True).stdout
        rows = {line.split("|")[0]: tuple(line.split("|")[1:3]) for line in out.splitlines() if line.strip()}
        done = {k: v for k, v in rows.items() if k in ids and v[0] not in ("PENDING", "RUNNING")}
        if len(done) >= expect or time.time() > deadline:
            return rows
        time.sleep(1.0)


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


@pytest.fixture(scope="module")
def iso_sweep(slurm_cluster, tmp_path_factory):
    from scalelab.data.stdlib import open_stdlib

    open_stdlib(0.05)  # build the corpus before two jobs want it at once
    root = tmp_path_factory.mktemp("slurm_iso")
    sweep_dir = root / "iso"
    r, seconds = scalelab_train("-m", *ISO, *LAUNCHER, f"hydra.sweep.dir={sweep_dir}", cwd=root)
    print(f"\nIsoFLOP sweep on SLURM: {seconds:.1f} s", file=sys.stderr)
    return {"root": root, "dir": sweep_dir, "result": r, "seconds": seconds}


def test_isoflop_sweep_on_slurm(iso_sweep, slurm_cluster):
    r, sweep_dir = iso_sweep["result"], iso_sweep["dir"]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    plan = json.loads((sweep_dir / "plan.json").read_text())
    assert len(plan["jobs"]) == 3
    tasks = array_tasks(sweep_dir)
    assert len(tasks) == 3
    rows = sacct(tasks, expect=3)
    for task in tasks:
        state, node = rows[task]
        assert state == "COMPLETED", rows
        assert node == slurm_cluster["node"]
    runs = summaries(sweep_dir)
    assert set(runs) == {j["subdir"] for j in plan["jobs"]}
    assert {s["slurm_job"] for s in runs.values()} == tasks  # each run names the array task that trained it
    for job in plan["jobs"]:
        s = runs[job["subdir"]]
        assert s["status"] == "completed"
        assert s["budget"] == job["budget"] and s["tokens"] == job["tokens"] and s["model"] == job["model"]
        assert abs(s["flops"] - s["budget"]) / s["budget"] <= 0.01
    # each job ran under SLURM (srun set its environment) and shared the sweep's compilation cache
    script = next((sweep_dir / ".submitit").glob("*/*_submission.sh")).read_text()
    assert f"export JAX_COMPILATION_CACHE_DIR={run_env()['JAX_COMPILATION_CACHE_DIR']}" in script


def test_relaunch_skips_completed_jobs(iso_sweep):
    """The sweeper sees every run completed with the same config and submits nothing."""
    sweep_dir = iso_sweep["dir"]
    assert iso_sweep["result"].returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    tasks = array_tasks(sweep_dir)
    r, seconds = scalelab_train("-m", *ISO, *LAUNCHER, f"hydra.sweep.dir={sweep_dir}", cwd=iso_sweep["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipping 3 job(s)" in r.stdout
    assert array_tasks(sweep_dir) == tasks  # nothing submitted
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in sweep_dir.glob("*/summary.json")} == before
    assert seconds < 60, seconds


def test_relaunch_through_slurm_trainer_skips_completed(iso_sweep):
    """With the sweeper's own check off, the jobs run on SLURM and the trainer returns at once."""
    sweep_dir = iso_sweep["dir"]
    assert iso_sweep["result"].returncode == 0
    before = {p: (p.stat().st_mtime_ns, p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    old = array_tasks(sweep_dir)
    r, seconds = scalelab_train("-m", *ISO, *LAUNCHER, "hydra.sweeper.skip_completed=false",
                                f"hydra.sweep.dir={sweep_dir}", cwd=iso_sweep["root"])
    assert r.returncode == 0, r.stderr[-3000:]
    new = array_tasks(sweep_dir) - old
    assert len(new) == 3
    rows = sacct(new, expect=3)
    assert all(rows[t][0] == "COMPLETED" for t in new), rows
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in sweep_dir.glob("*/summary.json")} == before
    print(f"\nrelaunch through SLURM (trainer skips): {seconds:.1f} s", file=sys.stderr)
    # no training: each job only starts, sees its completed summary and returns
    assert seconds < max(0.75 * iso_sweep["seconds"], 30), (seconds, iso_sweep["seconds"])


def test_job_spanning_two_slurm_tasks(slurm_cluster, tmp_path):
    """One job, two SLURM tasks (processes) joined into one jax.distributed run by the trainer."""
    sweep_dir = tmp_path / "multi"
    r, seconds = scalelab_train(
        "-m", "hydra/launcher=slurm_multihost", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=15",
        "hydra.launcher.mem_gb=4", "model=p50k", "data.tokens=5120", *SMALL, f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path)
    print(f"\n2-task job on SLURM: {seconds:.1f} s", file=sys.stderr)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    tasks = array_tasks(sweep_dir)
    assert len(tasks) == 1
    rows = sacct(tasks, expect=1)
    assert rows[next(iter(tasks))][0] == "COMPLETED", rows
    (s,) = summaries(sweep_dir).values()
    assert s["status"] == "completed"
    assert s["processes"] == 2 and s["devices"] == 2, (s["processes"], s["devices"])
    assert s["steps"] == 20
    # both tasks ran the job: submitit keeps one log per task
    logs = sorted(p.name for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert any(n.endswith("_0_log.out") for n in logs) and any(n.endswith("_1_log.out") for n in logs), logs


def squeue_jobs() -> dict[str, str]:
    """{job id: state code} of the queue (`7_0` for an array's task)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %t"], capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_until(condition, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def slurm_record(job: str) -> str:
    """What SLURM itself says of `job` (every attempt in sacct, its lines in slurmctld's log), for a
    failing assertion's message."""
    attempts = subprocess.run(["sacct", "-D", "-P", "-o", "JobID,State,ExitCode,Start,End", "-j", job.split("_")[0]],
                              capture_output=True, text=True).stdout
    log = Path(SLURM_DIR) / "log" / "slurmctld.log"
    lines = [x for x in (log.read_text().splitlines() if log.exists() else [])
             if re.search(rf"JobId={job.split('_')[0]}\b", x)]
    return f"\n--- sacct -D:\n{attempts}\n--- slurmctld.log:\n" + "\n".join(lines[-30:])


def start_now(job: str) -> None:
    """A requeued job, once pending again, allowed to start at once (SLURM holds a requeued job for
    two minutes before it may start again)."""
    wait_until(lambda: squeue_jobs().get(job) == "PD", 60, f"job {job} to be pending again")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, capture_output=True)


# 40 steps, a checkpoint every 5, every step logged
REQUEUED = ["model=p50k", "data.tokens=10240", *SMALL, "train.log_every=1", "checkpoint.every=5"]


# how a running job gets requeued: by the cluster (`scontrol requeue`: SLURM sends SIGTERM, the run
# saves and exits 3), or by submitit on SLURM's SIGUSR2 before a time limit (the run saves and hands
# the signal to submitit's handler, which requeues the job itself)
REQUEUE_BY = {
    "scontrol": lambda job: ["scontrol", "requeue", job],
    "usr2": lambda job: ["scancel", "--signal=USR2", job],
}


@pytest.fixture(scope="module")
def uninterrupted_losses(tmp_path_factory):
    from scalelab.train.runlog import read_metrics

    root = tmp_path_factory.mktemp("uninterrupted")
    r, _ = scalelab_train(*REQUEUED, f"hydra.run.dir={root / 'run'}", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return [row["train_loss"] for row in read_metrics(root / "run")]


@pytest.mark.parametrize("how", list(REQUEUE_BY))
def test_a_requeued_job_resumes_from_its_checkpoint_with_the_uninterrupted_losses(slurm_cluster, tmp_path, how,
                                                                                   uninterrupted_losses):
    """A running job requeued: SLURM starts it again and the run resumes from the checkpoint its
    signal handler saved; submitit and the sweep see one completed job with the uninterrupted losses."""
    from scalelab.train.runlog import read_metrics

    sweep_dir = tmp_path / "requeue"
    # slower steps (not other numbers), so that the requeue lands mid-run
    env = run_env(SCALELAB_FAULTS="step_delay:0.25")
    t0 = time.time()
    sweep = subprocess.Popen([TRAIN, "-m", *LAUNCHER, *REQUEUED, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def checkpointed():
            done = [p for p in sweep_dir.glob("*/checkpoints/*") if p.name.isdigit()]
            return done and squeue_jobs()
        jobs = wait_until(checkpointed, 240, "the job's first checkpoint")
        (job,) = jobs
        run_dir = next(p.parent.parent for p in sweep_dir.glob("*/checkpoints/*"))
        subprocess.run(REQUEUE_BY[how](job), check=True, capture_output=True, text=True)
        start_now(job)
        out, err = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    print(f"\njob requeued by {how} on SLURM: {time.time() - t0:.1f} s", file=sys.stderr)
    assert sweep.returncode == 0, out[-2000:] + err[-3000:] + slurm_record(job)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    (resumed,) = summary["resumed_from"]  # the step at which the signal stopped it
    assert 0 < resumed < 40
    ours = read_metrics(run_dir)
    assert [r["step"] for r in ours] == list(range(1, 41))  # each step once
    assert [r["train_loss"] for r in ours] == uninterrupted_losses
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.*"))
    assert {"scontrol": "SIGTERM", "usr2": "Caught signal SIGUSR2"}[how] in logs
    assert "saved a checkpoint at step" in logs

    def attempts():  # every attempt of the job (-D), polled: sacct lags the jobs
        raw = subprocess.run(["sacct", "-n", "-D", "-X", "-P", "-o", "JobID,State", "-j", job.split("_")[0]],
                             capture_output=True, text=True).stdout
        states = [line.split("|")[1] for line in raw.splitlines() if line.strip()]
        return states if states and states[-1] == "COMPLETED" else None
    assert "REQUEUED" in wait_until(attempts, 30, "sacct to record the job's attempts", poll=1.0)


# the IsoFLOP sweep above, packed: two groups (p50k: 2 members, p150k: 1), so two SLURM jobs; every
# step logged, a checkpoint every 10 steps
PACKED = [*ISO, "train.log_every=1", "checkpoint.every=10"]
PACKED_LAUNCHER = ["hydra/launcher=slurm_packed", "hydra.launcher.timeout_min=15", "hydra.launcher.cpus_per_task=1",
                   "hydra.launcher.mem_gb=4"]


def member_losses(sweep_dir: Path) -> dict[str, list]:
    from scalelab.train.runlog import read_metrics

    return {p.parent.name: [(r["step"], r["train_loss"]) for r in read_metrics(p.parent)]
            for p in sweep_dir.glob("*/summary.json")}


@pytest.fixture(scope="module")
def locally_packed(tmp_path_factory):
    """The same sweep with the local packed launcher (one device, as each SLURM job has)."""
    root = tmp_path_factory.mktemp("local_packed")
    r, _ = scalelab_train("-m", *PACKED, "hydra/launcher=packed", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = member_losses(root / "sweep")
    assert len(losses) == 3
    return losses


def test_a_packed_sweep_on_slurm_trains_each_group_as_one_job_and_survives_a_requeue_and_a_scancel(
        slurm_cluster, tmp_path, locally_packed):
    """Two groups, two SLURM jobs. One is requeued mid-run (`scontrol requeue`: it saves and SLURM
    starts it again), the other cancelled (`scancel`: its member fails alone, the sweep says so);
    the relaunch submits only the cancelled group, which resumes from its checkpoint. Every member's
    losses equal the local packed launcher's, bitwise, each step logged once; `scalelab status`
    lists each member with its job id."""
    from scalelab.sweep.status import cluster_jobs

    sweep_dir = tmp_path / "packed"
    command = [TRAIN, "-m", *PACKED, *PACKED_LAUNCHER, f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.time()
    sweep = subprocess.Popen(command, cwd=tmp_path, env=run_env(SCALELAB_FAULTS="step_delay:0.2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def both_checkpointed():
            jobs = cluster_jobs(sweep_dir)
            saved = {p.parent.parent.name for p in sweep_dir.glob("*/checkpoints/*") if p.name.isdigit()}
            running = {j for j, state in squeue_jobs().items() if state == "R"}
            groups = {}
            for member, job in jobs.items():
                groups.setdefault(job, set()).add(member)
            ready = len(groups) == 2 and all(m & saved and j in running for j, m in groups.items())
            return groups if ready else None
        groups = wait_until(both_checkpointed, 240, "both groups' jobs to save a checkpoint")
        requeued = next(j for j, m in groups.items() if len(m) == 2)  # the p50k group
        cancelled = next(j for j, m in groups.items() if len(m) == 1)  # the p150k member
        subprocess.run(["scontrol", "requeue", requeued], check=True, capture_output=True, text=True)
        subprocess.run(["scancel", cancelled], check=True, capture_output=True, text=True)
        start_now(requeued)
        out, err = sweep.communicate(timeout=600)
    finally:
        sweep.kill()
    print(f"\npacked sweep on SLURM, requeued and cancelled: {time.time() - t0:.1f} s", file=sys.stderr)
    assert sweep.returncode == 1, out[-2000:] + err[-3000:] + slurm_record(requeued)  # the cancelled group failed, alone
    assert f"SLURM job {cancelled}" in out + err
    done = summaries(sweep_dir)
    assert all(done[m]["status"] == "completed" and done[m]["resumed_from"] for m in groups[requeued])
    (lost,) = groups[cancelled]
    assert done.get(lost, {}).get("status") != "completed"

    status = subprocess.run([str(Path(TRAIN).parent / "scalelab"), "status", str(sweep_dir)], capture_output=True,
                            text=True, env=run_env())
    assert f"SLURM job {requeued}" in status.stdout and f"SLURM job {cancelled}" in status.stdout, status.stdout
    assert lost in status.stdout

    r = subprocess.run(command, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    again = cluster_jobs(sweep_dir)
    assert again[lost] not in (requeued, cancelled)  # resubmitted alone: the completed group is not
    assert all(again[m] == requeued for m in groups[requeued])
    assert summaries(sweep_dir)[lost]["resumed_from"]
    assert member_losses(sweep_dir) == locally_packed


def test_the_sweep_waits_for_its_jobs_to_leave_the_queue(slurm_cluster, tmp_path):
    """The SLURM launchers take a job for ended once squeue no longer lists it (an array's task by
    its array), not at the first ended state sacct reports (a requeued job reports one between its
    attempts): waiting on a job array and on a single job returns only after both have left."""
    from types import SimpleNamespace

    from hydra_plugins.scalelab_launchers.slurm import still_queued, wait_off_queue

    def sbatch(*args):
        out = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), *args, "--wrap", "sleep 2"],
                             capture_output=True, text=True, check=True).stdout
        return out.strip().split(";")[0]

    array, single = sbatch("--array=0-1"), sbatch()
    handles = [SimpleNamespace(job_id=f"{array}_0"), SimpleNamespace(job_id=f"{array}_1"), SimpleNamespace(job_id=single)]
    assert still_queued([h.job_id for h in handles])
    t0 = time.time()
    wait_off_queue(handles, longest_poll_s=0.5)
    assert time.time() - t0 >= 1.5, "returned while the jobs were still sleeping"
    assert not squeue_jobs().keys() & {f"{array}_0", f"{array}_1", single}, squeue_jobs()
    assert still_queued(["999999"]) is False  # an id SLURM does not know has left the queue
