"""scalelab.paths and the run-directory mirror: local paths untouched, URLs mapped to their local
mirrors, and the upload/download rules, against a real S3 server on localhost."""

import json
import shutil
from pathlib import Path

import pytest

from scalelab import paths
from scalelab.cli.train import mirror_run_dirs
from scalelab.train.store import RunMirror, locate
from tests.s3 import s3_server


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        yield env


def test_local_paths_are_unchanged(tmp_path, cache):
    for local in ("runs/x", "/abs/run", str(tmp_path), "C:/runs/x", "file:///tmp/x", "relative:colon"):
        assert not paths.is_url(local)
        assert paths.fetch(local) == Path(local)
    assert not paths.is_url(Path("s3://bucket/key"))  # a pathlib.Path is local, whatever its text says
    overrides = [f"hydra.run.dir={tmp_path}/run", "hydra.sweep.dir=sweeps/a", "model=p50k", "data.path=/d"]
    assert mirror_run_dirs(overrides) == overrides
    assert locate(tmp_path / "run") == (tmp_path / "run", None)
    assert locate(str(tmp_path / "run")) == (tmp_path / "run", None)


def test_a_url_maps_to_its_mirror_and_back(cache):
    local = paths.mirror_dir("s3://bucket/sweep/run")
    assert local == cache / "remote" / "s3" / "bucket" / "sweep" / "run"
    assert paths.mirror_url(local) == "s3://bucket/sweep/run"
    assert paths.mirror_url(local / "checkpoints") == "s3://bucket/sweep/run/checkpoints"
    assert locate("gs://b/r") == (cache / "remote" / "gs" / "b" / "r", "gs://b/r")
    assert paths.mirror_url(cache / "downloads" / "s3" / "bucket" / "run") is None  # a reader's copy
    assert mirror_run_dirs(["hydra.run.dir=s3://bucket/run", "++hydra.sweep.dir=gs://b/s"]) == [
        f"hydra.run.dir={cache / 'remote' / 's3' / 'bucket' / 'run'}",
        f"++hydra.sweep.dir={cache / 'remote' / 'gs' / 'b' / 's'}"]
    for bad in ("s3://", "s3://bucket/../x"):
        with pytest.raises((ValueError, AttributeError)):
            paths.mirror_dir(bad)


def _checkpoint(run_dir: Path, step: int, listed: bool) -> None:
    (run_dir / "checkpoints" / str(step) / "state").mkdir(parents=True)
    (run_dir / "checkpoints" / str(step) / "state" / "_METADATA").write_text("{}")
    if listed:
        (run_dir / "checkpoint_files").mkdir(exist_ok=True)
        (run_dir / "checkpoint_files" / f"{step}.json").write_text(json.dumps({"step": step}))


def test_push_uploads_only_complete_checkpoints_and_mirrors_deletions(s3, cache):
    url = "s3://bucket/push/run"
    local, _ = locate(url)
    local.mkdir(parents=True)
    (local / "metrics.jsonl").write_text('{"step": 1}\n')
    (local / ".lock").write_text("123")
    _checkpoint(local, 8, listed=True)
    _checkpoint(local, 16, listed=False)  # Orbax finished it, its file list is not written yet
    (local / "checkpoints" / "24.orbax-checkpoint-tmp-1").mkdir()
    (local / "checkpoints" / "24.orbax-checkpoint-tmp-1" / "x").write_text("partial")
    mirror = RunMirror(url, local)
    mirror.push()
    assert set(paths.listing(url)) == {"metrics.jsonl", "checkpoints/8/state/_METADATA", "checkpoint_files/8.json"}

    (local / "checkpoint_files" / "16.json").write_text("{}")  # now complete
    shutil.rmtree(local / "checkpoints" / "8")  # checkpoint.keep deleted it
    (local / "checkpoint_files" / "8.json").unlink()
    (local / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    mirror.push()
    assert set(paths.listing(url)) == {"metrics.jsonl", "checkpoints/16/state/_METADATA", "checkpoint_files/16.json"}
    fs, path = paths.filesystem(paths.join(url, "metrics.jsonl"))
    assert fs.cat_file(path).decode().count("\n") == 2


def test_pull_makes_the_mirror_equal_to_the_bucket(s3, cache, tmp_path):
    url = "s3://bucket/pull/run"
    source = tmp_path / "source"
    source.mkdir()
    (source / "summary.json").write_text('{"status": "running"}')
    _checkpoint(source, 8, listed=True)
    _checkpoint(source, 16, listed=False)  # an upload cut short by a kill: no file list
    paths.upload(source, url, sorted(paths.local_files(source)))

    local, _ = locate(url)
    local.mkdir(parents=True)
    _checkpoint(local, 24, listed=True)  # an earlier attempt's, never uploaded
    (local / ".hydra").mkdir()
    (local / ".hydra" / "config.yaml").write_text("this launch's")
    RunMirror(url, local).pull()
    assert set(paths.local_files(local)) == {"summary.json", "checkpoints/8/state/_METADATA",
                                            "checkpoint_files/8.json", ".hydra/config.yaml"}
    assert not (local / "checkpoints" / "24").exists() and not (local / "checkpoints" / "16").exists()


def test_a_checkpoint_url_downloads_only_the_newest_listed_checkpoint(s3, cache, tmp_path):
    from scalelab.train.checkpoint import fetch_checkpoint

    url = "s3://bucket/read/run"
    source = tmp_path / "source"
    source.mkdir()
    (source / "summary.json").write_text("{}")
    for step, listed in ((8, True), (16, True), (24, False)):
        _checkpoint(source, step, listed)
    paths.upload(source, url, sorted(paths.local_files(source)))
    local = fetch_checkpoint(url)
    assert local == cache / "downloads" / "s3" / "bucket" / "read" / "run"
    assert sorted(paths.local_files(local)) == [paths.FETCHED, "checkpoints/16/state/_METADATA", "summary.json"]
    assert fetch_checkpoint(url + "/checkpoints/8") == cache / "downloads" / "s3" / "bucket" / "read" / "run" / \
        "checkpoints" / "8"


def test_a_file_replaced_in_the_store_with_one_of_the_same_size_is_downloaded_again(s3, cache, tmp_path):
    url = "s3://bucket/data/tokens"
    source = tmp_path / "source"
    source.mkdir()
    big = paths.SMALL_BYTES + 1  # above the size that is downloaded again whatever its size says
    (source / "train-00000.bin").write_bytes(b"a" * big)
    paths.upload(source, url, ["train-00000.bin"])
    local = paths.fetch(url)
    assert (local / "train-00000.bin").read_bytes()[:1] == b"a"
    mtime = (local / "train-00000.bin").stat().st_mtime_ns
    assert paths.fetch(url) == local and (local / "train-00000.bin").stat().st_mtime_ns == mtime  # not again
    (source / "train-00000.bin").write_bytes(b"b" * big)  # re-prepared: same name, same size
    paths.upload(source, url, ["train-00000.bin"])
    assert (paths.fetch(url) / "train-00000.bin").read_bytes()[:1] == b"b"


def test_a_fork_from_url_downloads_only_the_fork_step(s3, cache, tmp_path):
    from scalelab.train.start import fork_source

    url = "s3://bucket/stable/run"
    source = tmp_path / "source"
    source.mkdir()
    for step in (8, 16):
        _checkpoint(source, step, listed=True)
    paths.upload(source, url, sorted(paths.local_files(source)))
    local = fork_source(url, 8)
    assert local == cache / "downloads" / "s3" / "bucket" / "stable" / "run"
    assert sorted(paths.local_files(local)) == [paths.FETCHED, "checkpoint_files/8.json", "checkpoints/8/state/_METADATA"]
    assert fork_source("runs/stable", 8) == "runs/stable"  # a local path as it was
