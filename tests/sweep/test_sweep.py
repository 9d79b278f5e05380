"""Sweeps with Hydra's basic launcher (no SLURM): plain grids, the IsoFLOP sweeper, `scalelab status`.

The end-to-end tests run `scalelab-train -m ...` as a subprocess on one CPU device with models
p50k / p150k at data.seq_len=32, train.batch_size=8 (256 tokens per step) and a few dozen steps.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalelab import ledger
from scalelab.cli import sweep as sweep_cli
from scalelab.model import ladder
from scalelab.sweep import plan as sweep
from scalelab.sweep import status as sweep_status_mod

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(Path(sys.executable).parent / "scalelab-train")
SMALL = ["data.seq_len=32", "train.batch_size=8", "train.eval_tokens=512", "train.progress=false",
         "train.log_every=10"]
# two budgets, two sizes: 8e9 FLOPs cannot be hit within 1% by p150k (27 steps = -1.5%), so the plan
# has 3 jobs: p50k @ 8e9 (70 steps), p50k @ 1.5e10 (132 steps), p150k @ 1.5e10 (51 steps)
ISO = ["hydra/sweeper=isoflop", "hydra.sweeper.budgets=[8e9,1.5e10]", "hydra.sweeper.models=[p50k,p150k]",
       "hydra.sweeper.tokens_per_param=[0.05,100]", *SMALL]


def run_env(**extra) -> dict:
    env = dict(os.environ)
    # one device per process; LLVM's optimisations off: compiling, not running, dominates these jobs
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"
    # the plugin lives in the hydra_plugins namespace package of this checkout
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.update(extra)
    return env


def scalelab_train(*args, cwd, timeout=600, **env) -> subprocess.CompletedProcess:
    return subprocess.run([TRAIN, *args], cwd=cwd, env=run_env(**env), capture_output=True, text=True,
                          timeout=timeout)


def summaries(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/summary.json"))}


def plan_rows(stdout: str) -> list[tuple]:
    """(budget, model, D, steps) of each row of a printed plan table."""
    rows = []
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) >= 6 and re.fullmatch(r"[0-9.e+]+", cells[0]) and re.fullmatch(r"p\d+[kmb]", cells[1]):
            rows.append((float(cells[0]), cells[1], int(cells[3].replace(",", "")), int(cells[5].replace(",", ""))))
    return rows


def status_of(sweep_dir, *flags, capsys) -> str:
    parser = argparse.ArgumentParser()
    sweep_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["status", str(sweep_dir), *flags])
    assert args.func(args) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def corpus():
    """Build the stdlib corpus once, before jobs in other processes read it."""
    from scalelab.data.stdlib import open_stdlib

    open_stdlib(0.05)


def jax_cache() -> str:
    return str(Path(os.environ["SCALELAB_CACHE"]).resolve() / "jax-test-cache")


# ---------------------------------------------------------------------------------------------
# the plan, without training


def shape(name: str, seq_len: int = 32) -> ledger.Shape:
    r = ladder.rung(name)
    return ledger.Shape(d_model=r["d_model"], n_layers=r["n_layers"], n_heads=r["n_heads"],
                        n_kv_heads=r["n_kv_heads"], d_ff=r["d_ff"], vocab=ledger.padded_vocab(257, 8),
                        seq_len=seq_len)


def test_plan_pair_lands_within_tolerance_on_whole_steps():
    for name in ("p50k", "p150k", "p1m"):
        for budget in (1e11, 3.3e12, 1e13):
            job, note = sweep.plan_pair(shape(name), budget, 256, model=name, window=(0, 1e9))
            assert note is None
            assert job.tokens % 256 == 0 and job.steps * 256 == job.tokens
            assert job.flops == ledger.flops_per_token(shape(name)) * job.tokens
            assert abs(job.flops - budget) / budget <= 0.01
            assert job.params == ledger.non_embedding_params(shape(name))


def test_plan_pair_drops_what_cannot_land_or_lies_outside_the_window():
    job, note = sweep.plan_pair(shape("p150k"), 8e9, 256, model="p150k", window=(0, 1e9))
    assert job is None and "27 whole steps" in note and "1%" in note
    job, note = sweep.plan_pair(shape("p50k"), 1e6, 256, model="p50k")
    assert job is None and "exceeds the budget" in note
    job, note = sweep.plan_pair(shape("p50k"), 1.5e10, 256, model="p50k", window=(2, 200))
    assert job is None and "outside the window [2, 200]" in note


# ---------------------------------------------------------------------------------------------
# end to end with the basic launcher


@pytest.mark.slow
def test_plain_grid_2x2(tmp_path, corpus, capsys):
    sweep_dir = tmp_path / "grid"
    t0 = time.time()
    r = scalelab_train("-m", "model=p50k,p150k", "data.tokens=2560,5120", *SMALL, f"hydra.sweep.dir={sweep_dir}",
                       cwd=tmp_path, JAX_COMPILATION_CACHE_DIR=jax_cache())
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    runs = summaries(sweep_dir)
    # one deterministic directory per job, named by its overrides
    expected = {",".join(sorted([f"data.tokens={d}", f"model={m}", *(o for o in SMALL if "progress" not in o)]))
                for m in ("p50k", "p150k") for d in (2560, 5120)}
    assert set(runs) == expected, (set(runs), expected)
    for name, s in runs.items():
        assert s["status"] == "completed"
        assert s["tokens"] == int(re.search(r"data.tokens=(\d+)", name).group(1))
        assert s["model"] in name
    print(f"plain 2x2 grid: {elapsed:.1f} s", file=sys.stderr)

    out = status_of(sweep_dir, capsys=capsys)
    assert "4 completed" in out and "missing" not in out.split("\n", 1)[1]
    table = status_of(sweep_dir, "--json", capsys=capsys)
    st = json.loads(table)
    assert st["kind"] == "grid" and st["column_key"] == "data.tokens"
    assert st["rows"] == ["p50k", "p150k"] and st["columns"] == ["2560", "5120"]

    # relaunch: the trainer finds each run completed with the same config and returns at once
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    t0 = time.time()
    r2 = scalelab_train("-m", "model=p50k,p150k", "data.tokens=2560,5120", *SMALL, f"hydra.sweep.dir={sweep_dir}",
                        cwd=tmp_path, JAX_COMPILATION_CACHE_DIR=jax_cache())
    assert r2.returncode == 0, r2.stderr[-3000:]
    print(f"plain 2x2 grid relaunched (trainer skips completed runs): {time.time() - t0:.1f} s", file=sys.stderr)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")} == before
    assert summaries(sweep_dir) == runs


@pytest.mark.slow
def test_isoflop_sweep_dry_run_then_run(tmp_path, corpus, capsys):
    sweep_dir = tmp_path / "iso"
    dry = scalelab_train("-m", *ISO, "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = plan_rows(dry.stdout)
    assert sorted(planned) == sorted([(8e9, "p50k", 70 * 256, 70), (1.5e10, "p50k", 132 * 256, 132),
                                      (1.5e10, "p150k", 51 * 256, 51)]), dry.stdout
    assert "budget 8e+09, p150k: dropped" in dry.stdout and "nothing launched" in dry.stdout
    assert not sweep_dir.exists()  # a dry run writes nothing

    t0 = time.time()
    r = scalelab_train("-m", *ISO, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    elapsed = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    assert plan_rows(r.stdout) == planned
    plan = json.loads((sweep_dir / "plan.json").read_text())
    runs = summaries(sweep_dir)
    assert {j["subdir"] for j in plan["jobs"]} == set(runs)
    ran = sorted((s["budget"], s["model"], s["tokens"], s["steps"]) for s in runs.values())
    assert ran == sorted(planned)  # what ran is what the dry run printed
    for s in runs.values():
        assert s["status"] == "completed"
        assert abs(s["flops"] - s["budget"]) / s["budget"] <= 0.01
    # the sweep's persistent compilation cache was used
    assert any((sweep_dir / ".jax_cache").iterdir())
    print(f"isoflop sweep (3 jobs): {elapsed:.1f} s", file=sys.stderr)

    st = json.loads(status_of(sweep_dir, "--json", capsys=capsys))
    assert st["kind"] == "isoflop" and st["column_key"] == "budget"
    assert st["rows"] == ["p50k", "p150k"] and st["columns"] == ["8e+09", "1.5e+10"]
    assert st["counts"] == {"completed": 3}

    # relaunch: the sweeper sees every job completed with the same config and launches nothing
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    r2 = scalelab_train("-m", *ISO, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "skipping 3 job(s)" in r2.stdout
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")} == before


def test_isoflop_grid_with_other_sweep_overrides_dry_run(tmp_path):
    r = scalelab_train("-m", *ISO, "train.seed=0,1", "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = plan_rows(r.stdout)
    assert len(rows) == 6 and len(set(rows)) == 3
    assert r.stdout.count("train.seed=0") >= 3 and r.stdout.count("train.seed=1") >= 3


def test_impossible_plan_fails_before_launching(tmp_path):
    sweep_dir = tmp_path / "impossible"
    r = scalelab_train("-m", "hydra/sweeper=isoflop", "hydra.sweeper.budgets=[1e6,1e7]",
                       "hydra.sweeper.models=[p50k,p150k]", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert r.returncode != 0
    assert "plan is empty" in r.stderr and "nothing was launched" in r.stderr
    assert "exceeds the budget" in r.stdout
    assert not sweep_dir.exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()


def test_isoflop_refuses_overrides_it_plans_itself(tmp_path):
    r = scalelab_train("-m", *ISO, "model=p50k", f"hydra.sweep.dir={tmp_path / 's'}", cwd=tmp_path)
    assert r.returncode != 0 and "sets model, data.tokens, budget itself" in r.stderr
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# status of a sweep directory with completed, failed and missing jobs


def _write_summary(run_dir: Path, **fields) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(fields))


def test_status_completed_failed_missing(tmp_path, capsys):
    sweep_dir = tmp_path / "s"
    jobs = []
    for budget in (1e15, 3e15):
        for model, n in (("p1m", 930_400), ("p3m", 3_000_000)):
            overrides = [f"model={model}", f"data.tokens={int(budget / 6 / n)}", f"budget={sweep.fmt_budget(budget)}"]
            jobs.append({"overrides": overrides, "subdir": ",".join(sorted(overrides)), "model": model,
                         "budget": budget, "params": n})
    sweep_dir.mkdir()
    (sweep_dir / "plan.json").write_text(json.dumps({"kind": "isoflop", "jobs": jobs}))
    _write_summary(sweep_dir / jobs[0]["subdir"], status="completed", model="p1m", final_eval_loss=3.25,
                   budget=1e15, params=930_400)
    # the failed run was SLURM job 7_1 (submitit kept its error log), the diverged one 7_2 (no log)
    _write_summary(sweep_dir / jobs[1]["subdir"], status="failed", model="p3m", budget=1e15, slurm_job="7_1",
                   error={"message": "RuntimeError: out of memory\nsecond line", "traceback": "..."})
    _write_summary(sweep_dir / jobs[2]["subdir"], status="diverged", model="p1m", budget=3e15, slurm_job="7_2",
                   error={"message": "non-finite training metrics at step 7"})
    log = sweep_dir / ".submitit" / "7_1" / "7_1_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback ...")
    # jobs[3] never ran: missing

    out = status_of(sweep_dir, capsys=capsys)
    lines = out.splitlines()
    assert "1 completed" in lines[0] and "1 failed" in lines[0] and "1 diverged" in lines[0] and "1 missing" in lines[0]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.startswith("p")}
    assert table["p1m"] == ["completed", "3.2500", "diverged"]
    assert table["p3m"] == ["failed", "missing"]
    assert "failed: p3m @ 1e+15: RuntimeError: out of memory" in out and "second line" not in out
    assert f"(SLURM job 7_1, log: {log})" in out and "(SLURM job 7_2)" in out
    assert "SLURM job 7_1:" not in out  # one job per run: no per-job listing (that is for packed groups)
    assert f"missing: {' '.join(jobs[3]['overrides'])}" in out

    st = json.loads(status_of(sweep_dir, "--json", capsys=capsys))
    cells = {(c["model"], c["column"]): c for c in st["cells"]}
    assert cells[("p1m", "1e+15")]["status"] == "completed" and cells[("p1m", "1e+15")]["final_eval_loss"] == 3.25
    assert cells[("p3m", "1e+15")]["error"] == "RuntimeError: out of memory"
    assert cells[("p3m", "3e+15")]["status"] == "missing"
    assert st["counts"] == {"completed": 1, "failed": 1, "diverged": 1, "missing": 1}


def test_status_of_a_basic_grid_from_multirun_yaml(tmp_path, capsys):
    """A plain grid: planned jobs come from multirun.yaml; a job without a run dir is missing."""
    from omegaconf import OmegaConf

    sweep_dir = tmp_path / "g"
    sweep_dir.mkdir()
    OmegaConf.save(OmegaConf.create({
        "hydra": {"overrides": {"task": ["model=p50k,p150k", "data.tokens=1e5,2e5", "train.seed=0"]},
                  "sweep": {"dir": str(sweep_dir), "subdir": "${run_name:${hydra.job.override_dirname}}"},
                  "job": {"config": {"override_dirname": {"kv_sep": "=", "item_sep": ",",
                                                          "exclude_keys": ["hydra.sweep.dir"]}}}},
    }), sweep_dir / "multirun.yaml")
    # the basic sweeper hands jobs canonical values (1e5 -> 100000.0): so are the run dirs named
    _write_summary(sweep_dir / "data.tokens=100000.0,model=p50k,train.seed=0", status="completed", final_eval_loss=4.0)
    _write_summary(sweep_dir / "data.tokens=200000.0,model=p50k,train.seed=0", status="running")
    _write_summary(sweep_dir / "data.tokens=100000.0,model=p150k,train.seed=0", status="preempted")
    st = json.loads(status_of(sweep_dir, "--json", capsys=capsys))
    assert st["kind"] == "grid" and st["rows"] == ["p50k", "p150k"] and st["columns"] == ["100000.0", "200000.0"]
    got = {(c["row"], c["column"]): c["status"] for c in st["cells"]}
    assert got == {("p50k", "100000.0"): "completed", ("p50k", "200000.0"): "running",
                   ("p150k", "100000.0"): "preempted", ("p150k", "200000.0"): "missing"}


def test_status_of_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        sweep_status_mod.sweep_status(tmp_path / "nope")


@pytest.fixture(autouse=True)
def _no_stray_outputs(tmp_path):
    yield
    # jobs must write only under their sweep dir (hydra.job.chdir=false, cwd=tmp_path)
    for name in ("outputs", "multirun"):
        assert not (tmp_path / name).exists()
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_failed_and_killed_jobs_are_reported_and_relaunch_redoes_only_them(tmp_path, corpus, capsys):
    """One job raises, the sweep is SIGKILLed mid-job; relaunching resumes the killed job from its
    checkpoint, reruns the failed one, and then skips what completed."""
    import signal

    sweep_dir = tmp_path / "faults"
    args = ["-m", "hydra/sweeper=isoflop", "hydra.sweeper.budgets=[1.5e10]", "hydra.sweeper.models=[p50k]",
            "hydra.sweeper.tokens_per_param=[0.05,100]", *SMALL, "checkpoint.every=20",
            f"init_from=null,{tmp_path / 'no-such-checkpoint'}", f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.Popen([TRAIN, *args], cwd=tmp_path, env=run_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    good = None
    while time.time() < deadline and proc.poll() is None:
        found = [d for d in sweep_dir.glob("*init_from=null*") if (d / "checkpoints" / "20").is_dir()]
        if found:
            good = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert good is not None, "the good job never reached its first checkpoint"
    assert json.loads((good / "summary.json").read_text())["status"] == "running"

    r = scalelab_train(*args, cwd=tmp_path)
    assert r.returncode != 0  # a job failed: the sweep says so
    runs = summaries(sweep_dir)
    bad = next(s for s in runs.values() if "no-such-checkpoint" in str(s["config"]["init_from"]))
    assert bad["status"] == "failed" and "init_from=" in bad["error"]["message"] \
        and "no such run or checkpoint" in bad["error"]["message"]
    assert "Traceback" in bad["error"]["traceback"]
    resumed = runs[good.name]
    assert resumed["status"] == "completed" and resumed["resumed_from"] and resumed["resumed_from"][0] >= 20
    table = status_of(sweep_dir, capsys=capsys)
    assert "failed" in table and "completed" in table

    r2 = scalelab_train(*args, cwd=tmp_path)
    assert r2.returncode != 0 and "skipping 1 job(s)" in r2.stdout  # only the failed job runs again


def test_isoflop_lr_grid_sweeps_factors_around_the_law_dry_run(tmp_path):
    from scalelab.lr_law_file import LrLaw, write_law

    law = LrLaw(c=0.5, p=-0.3, q=0.05)
    path = write_law(law, tmp_path / "law.json")
    r = scalelab_train("-m", *ISO, "hydra.sweeper.lr_grid=[0.5,1,2]", f"optimizer.lr_law={path}",
                       "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split() for line in r.stdout.splitlines() if "optimizer.lr=" in line]
    assert len(rows) == 9 and len({(c[0], c[1]) for c in rows}) == 3
    ratios = set()
    for cells in rows:
        n, d = int(cells[2].replace(",", "")), int(cells[3].replace(",", ""))
        lr = float(re.search(r"optimizer\.lr=([0-9.e+-]+)", " ".join(cells)).group(1))
        ratios.add(round(lr / law.lr(n, d), 2))
    assert ratios == {0.5, 1.0, 2.0}


def test_an_lr_grid_with_seeds_from_the_sweeper_s_params_launches_what_it_planned(tmp_path, corpus):
    """The quickstart's own study config (seeds in `hydra.sweeper.params`) with an lr grid: every
    planned run is launched with its own lr, into its own directory."""
    sweep_dir = tmp_path / "lr"
    r = scalelab_train("--config-dir", str(REPO / "experiments/quickstart"), "--config-name", "study", "-m",
                       "hydra.sweeper.budgets=[3e9]", "hydra.sweeper.models=[d8]", "hydra.sweeper.lr_grid=[0.5,2]",
                       "hydra.sweeper.tokens_per_param=[1,100000]", "train.eval_tokens=512",
                       f"hydra.sweep.dir={sweep_dir}", cwd=REPO, SCALELAB_HOST_DEVICES="1")
    assert r.returncode == 0, r.stderr[-3000:]
    planned = json.loads((sweep_dir / "plan.json").read_text())["jobs"]
    assert len(planned) == 4 and len({j["subdir"] for j in planned}) == 4  # 2 seeds x 2 lrs, 4 directories
    launched = {}
    for job in planned:
        summary = json.loads((sweep_dir / job["subdir"] / "summary.json").read_text())
        assert summary["status"] == "completed"
        lr = float(next(o for o in job["overrides"] if o.startswith("optimizer.lr=")).split("=")[1])
        seed = int(next(o for o in job["overrides"] if o.startswith("train.seed=")).split("=")[1])
        assert summary["config"]["optimizer"]["lr"] == pytest.approx(lr) and summary["config"]["train"]["seed"] == seed
        launched[(seed, lr)] = job["subdir"]
    lrs = sorted({lr for _, lr in launched})
    assert len(launched) == 4 and len(lrs) == 2 and lrs[1] / lrs[0] == pytest.approx(4, rel=1e-3)


def test_jobs_that_would_share_a_run_directory_are_refused_before_training(tmp_path):
    sweep_dir = tmp_path / "clash"
    r = scalelab_train("-m", *ISO, "optimizer.lr=0.001,0.002", "hydra.sweep.subdir=same", "hydra.sweeper.dry_run=true",
                       f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "would share a run directory" in r.stderr and "differ in" in r.stderr and "optimizer.lr" in r.stderr
    assert r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
    assert not sweep_dir.exists()


def test_sweeper_params_given_on_the_command_line_with_none_in_the_config(tmp_path):
    r = scalelab_train("-m", *ISO, 'hydra.sweeper.params={train.seed:"0,1"}', "hydra.sweeper.dry_run=true",
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(plan_rows(r.stdout)) == 6 and "train.seed=1" in r.stdout


def test_an_moe_sweep_spends_its_budgets_in_active_flops():
    from tests.helpers import compose_config

    dense = sweep.shape_of(compose_config(["model=p150k", *SMALL]))
    moe = sweep.shape_of(compose_config(["model=p150k", "model.moe.experts=8", "model.moe.top_k=1", *SMALL]))
    job, note = sweep.plan_pair(moe, 1.5e10, 256, model="p150k", window=(0.05, 100))
    assert job is not None, note
    assert job.params == ledger.non_embedding_params(moe) < ledger.total_params(moe) - ledger.embedding_params(moe)
    assert job.flops_per_token == ledger.flops_per_token(moe) and abs(job.flops / 1.5e10 - 1) <= 0.01
    # top-1 of 8 experts as wide as the dense MLP: the dense FLOPs per token plus the router's
    router = 6 * moe.n_layers * moe.d_model * moe.experts
    assert ledger.flops_per_token(moe) == ledger.flops_per_token(dense) + router


def test_budget_params_give_one_budget_its_own_seeds_and_other_budgets_are_noted(tmp_path):
    seeds = 'hydra.sweeper.params={train.seed:"0,1"}'
    r = scalelab_train("-m", *ISO, seeds, 'hydra.sweeper.budget_params={1.5e10:{train.seed:"0,1,2"},3e10:{x:1}}',
                       "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = plan_rows(r.stdout)
    # 8e9: p50k x 2 seeds; 1.5e10: (p50k, p150k) x 3 seeds; 3e10 is not a budget of this sweep
    assert sorted(b for b, *_ in rows) == [8e9] * 2 + [1.5e10] * 6, r.stdout
    assert "train.seed=2" in r.stdout and "3e+10" in r.stdout and "ignored" in r.stdout
