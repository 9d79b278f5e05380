"""Object-store paths end to end, against a real S3 server on localhost: prepared data and a run
directory in a bucket, a run killed with -9 and relaunched (from another machine's empty cache),
then `scalelab analyze collect s3://...` and `scalelab eval s3://...`."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scalelab import paths
from tests.helpers import REPO, TINY, finish, jax_cache_env
from tests.s3 import s3_server

# as tests/train/test_checkpoint.py's KILLABLE: 40 steps, slow enough to kill mid-run, a checkpoint every 8
KILLABLE = TINY + ["model.d_model=64", "model.d_ff=128", "data.seq_len=64", "data.tokens=20480",
                   "checkpoint.every=8", "checkpoint.keep=3", "data=prepared", "data.path=s3://bucket/tokens"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server():
        texts = tmp_path_factory.mktemp("texts")
        for i, source in enumerate(sorted((REPO / "scalelab" / "train").glob("*.py"))):
            (texts / f"{i}.txt").write_text(source.read_text())
        code, err = finish(command(["data", "prepare", str(texts), "--out", "s3://bucket/tokens"],
                                   cache=tmp_path_factory.mktemp("prepare-cache")))
        assert code == 0, err
        yield tmp_path_factory


def command(args, cache, train=False):
    env = {**os.environ, "SCALELAB_CACHE": str(cache), "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           **jax_cache_env()}  # the compilation cache is shared; the data and run mirrors are not
    entry = "from scalelab.cli.entry import train; train()" if train else \
        "from scalelab.cli.entry import cli; cli()"
    return subprocess.Popen([sys.executable, "-c", entry, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def start(run_dir, cache):
    return command([f"hydra.run.dir={run_dir}", *KILLABLE], cache, train=True)


def metrics(url):
    fs, path = paths.filesystem(paths.join(url, "metrics.jsonl"))
    return [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]


def summary(url):
    fs, path = paths.filesystem(paths.join(url, "summary.json"))
    return json.loads(fs.cat_file(path))


def listed_steps(url):
    return sorted(int(n.split("/")[1][:-5]) for n in paths.listing(url) if n.startswith("checkpoint_files/"))


@pytest.mark.slow
def test_a_run_in_a_bucket_killed_with_sigkill_resumes_from_the_bucket_bitwise(s3):
    reference = s3.mktemp("reference") / "run"  # a local run dir on the same data
    code, err = finish(start(reference, s3.mktemp("cache-reference")))
    assert code == 0, err
    uninterrupted = {r["step"]: r["train_loss"] for r in
                     (json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines())}

    url = "s3://bucket/sweep/run"
    proc = start(url, s3.mktemp("cache-first"))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not listed_steps(url):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    killed_at = listed_steps(url)
    assert killed_at, "no checkpoint reached the bucket before the kill"
    assert summary(url)["status"] == "running"  # what a crash leaves behind, in the bucket

    code, err = finish(start(url, s3.mktemp("cache-second")))  # the same command, on an empty cache
    assert code == 0, err
    result = summary(url)
    assert result["status"] == "completed"
    assert result["resumed_from"] == [max(killed_at)]
    assert result["data"]["path"] == "s3://bucket/tokens"
    assert [r["step"] for r in metrics(url)] == list(range(1, 41))  # each step exactly once
    assert {r["step"]: r["train_loss"] for r in metrics(url)} == uninterrupted  # bitwise
    assert ".hydra/config.yaml" in paths.listing(url)

    table = s3.mktemp("table") / "runs.csv"
    code, err = finish(command(["analyze", "collect", "s3://bucket/sweep", "--out", str(table)],
                               s3.mktemp("cache-collect")))
    assert code == 0, err
    import pandas as pd

    runs = pd.read_csv(table)
    assert list(runs["run_dir"]) == [url] and list(runs["sweep"]) == ["sweep"]
    assert runs["loss"][0] == pytest.approx(result["final_eval_loss"])

    out = s3.mktemp("eval") / "eval.json"
    code, err = finish(command(["eval", url, "--json", str(out)], s3.mktemp("cache-eval")))
    assert code == 0, err
    assert json.loads(out.read_text())["step"] == 40


def test_a_failed_start_in_a_bucket_leaves_nothing_behind(s3):
    url = "s3://bucket/failed/run"
    code, err = finish(command([f"hydra.run.dir={url}", *KILLABLE, "init_from=s3://bucket/no-such-run"],
                               s3.mktemp("cache-failed"), train=True))
    assert code == 2, err
    assert "error: init_from=s3://bucket/no-such-run: s3://bucket/no-such-run: no checkpoint found" in err
    assert paths.listing(url) == {}


def test_a_push_sends_the_metrics_before_the_checkpoint_list_that_commits_them():
    """A kill between two uploads must never leave a listed checkpoint without its metrics rows in
    the store (the resume would start after rows it never had)."""
    from scalelab.train.store import _order

    names = ["summary.json", "checkpoint_files/8.json", "metrics.jsonl", "checkpoints/8/state/x", "train.log"]
    sent = sorted(names, key=lambda n: (_order(n), n))
    assert sent.index("checkpoints/8/state/x") < sent.index("metrics.jsonl") < sent.index("checkpoint_files/8.json")
    assert sent[-1] == "summary.json"
