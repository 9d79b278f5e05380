"""Experiment trackers (`logger=[...]`): W&B offline files and MLflow's store hold what metrics.jsonl
holds, once per step across a resume, one tracker run per packed member; bad names and missing
packages fail before anything is compiled."""

import json
import struct

import pytest
from hydra.errors import MissingConfigException

from scalelab.config import ConfigError, check_keys
from scalelab.train import loop, trackers
from scalelab.train.run import run
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import TINY, compose_config

TRACKED = TINY + ["logger=[wandb,mlflow]", "train.eval_every=4", "checkpoint.every=4"]


# ---- reading the trackers' own records back ------------------------------------------------------
def wandb_records(path):
    """The records of a W&B transaction log (`run-<id>.wandb`): W&B's header, then LevelDB log
    framing (32 KiB blocks of checksum, length, type, data) around `wandb_internal_pb2.Record`s."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            yield wandb_internal_pb2.Record.FromString(pending)
            pending = b""


def wandb_run(run_dir) -> dict:
    """Every attempt's offline W&B run in `run_dir`: ids, names, config, history and summary."""
    out = {"ids": set(), "names": set(), "config": {}, "history": [], "summary": {}}
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(record.run.run_id)
                out["names"].add(record.run.display_name)
                out["config"] |= {u.key: json.loads(u.value_json) for u in record.run.config.update}
            elif kind == "history":
                out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                       for i in record.history.item})
            elif kind == "summary":
                out["summary"] |= {u.key: json.loads(u.value_json) for u in record.summary.update if u.key}
    return out


def mlflow_run(run_dir):
    from mlflow.tracking import MlflowClient

    record = trackers.read_ids(run_dir)["mlflow"]
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    return client, client.get_run(record["run_id"])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No W&B credentials or mode in the environment (so `auto` is offline), W&B's config in tmp."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / "wandb"))


# ---- tests -----------------------------------------------------------------------------------
def test_the_default_is_tensorboard_and_several_can_be_chosen():
    assert trackers.selected(compose_config().logger) == ["tensorboard"]
    chosen = compose_config(["logger=[tensorboard,wandb,mlflow]"]).logger
    assert trackers.selected(chosen) == ["tensorboard", "wandb", "mlflow"] and chosen.jsonl.enabled
    assert trackers.selected(compose_config(["logger=[jsonl]"]).logger) == []


def test_a_bad_logger_name_fails_naming_the_key():
    with pytest.raises(MissingConfigException, match="logger/nope"):
        compose_config(["logger=[wandb,nope]"])
    with pytest.raises(ConfigError, match=r"^logger\.nope: unknown key"):
        check_keys(compose_config(["+logger.nope.enabled=true"]))
    with pytest.raises(ConfigError, match=r"^logger\.wandb\.mode: must be one of"):
        from scalelab.config import validate

        validate(compose_config(TINY + ["logger.wandb.mode=cloud"]))


def test_a_missing_package_names_the_extra_before_compilation(monkeypatch):
    real = trackers.importlib.util.find_spec
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package: pip install 'scalelab\[mlflow\]'"):
        trackers.check(compose_config(["logger=[wandb,mlflow]"]).logger)


def test_trackers_are_not_imported_unless_selected():
    import subprocess
    import sys

    code = ("import sys, scalelab.train.run, scalelab.train.packed; "
            "print([m for m in ('wandb', 'mlflow', 'tensorboardX') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.slow
def test_wandb_and_mlflow_hold_the_runs_metrics_once_across_a_resume(tmp_path, monkeypatch, offline):
    """An attempt stopped at step 7 (checkpoint at 4), then resumed: each tracker's run has every
    step once, with metrics.jsonl's values, the resolved config and the final summary."""
    run_dir = tmp_path / "run"
    record = loop.Recorder.record

    def stop_at_7(self, step, *args, **kwargs):
        if step == 7:
            raise RuntimeError("interrupted")
        return record(self, step, *args, **kwargs)

    monkeypatch.setattr(loop.Recorder, "record", stop_at_7)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(compose_config(TRACKED), run_dir)
    monkeypatch.setattr(loop.Recorder, "record", record)
    summary = run(compose_config(TRACKED), run_dir)
    assert summary["status"] == "completed" and summary["resumed_from"] == [4]
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 13))

    wb = wandb_run(run_dir)
    assert len(wb["ids"]) == 1 and wb["names"] == {run_dir.name}
    assert [h["_step"] for h in wb["history"]] == list(range(1, 13))  # steps 5 and 6 once, not twice
    assert [h["train_loss"] for h in wb["history"]] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    assert sorted(evals) == [4, 8, 12]
    assert {h["_step"]: h["eval_loss"] for h in wb["history"] if "eval_loss" in h} == pytest.approx(evals)
    assert wb["config"]["model"]["d_model"] == 32 and wb["config"]["logger"]["wandb"]["enabled"] is True
    assert wb["summary"]["status"] == "completed"
    assert wb["summary"]["final_eval_loss"] == pytest.approx(summary["final_eval_loss"])

    client, ml = mlflow_run(run_dir)
    history = client.get_metric_history(ml.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, 13))
    assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
    assert ml.info.run_name == run_dir.name and ml.info.status == "FINISHED"
    assert ml.data.params["model.d_model"] == "32" and ml.data.params["train.batch_size"] == "8"
    assert ml.data.tags["summary.status"] == "completed"
    assert ml.data.metrics["summary.final_eval_loss"] == pytest.approx(summary["final_eval_loss"])
    assert read_summary(run_dir)["status"] == "completed"
    assert not (run_dir / "tensorboard").exists()  # logger=[...] replaces the default's list


@pytest.mark.slow
def test_each_packed_member_gets_its_own_tracker_runs(tmp_path, offline):
    from scalelab.sweep.packed import Job, run_jobs

    jobs = [Job(cfg=compose_config(TINY + ["logger=[wandb,mlflow]", f"optimizer.lr={lr}"]), run_dir=tmp_path / f"lr{lr}")
            for lr in (1e-2, 3e-3)]
    assert all(j.error is None for j in run_jobs(jobs))
    ids = set()
    for job in jobs:
        rows = read_metrics(job.run_dir)
        wb = wandb_run(job.run_dir)
        assert wb["names"] == {job.run_dir.name}
        assert [h["train_loss"] for h in wb["history"]] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
        client, ml = mlflow_run(job.run_dir)
        history = client.get_metric_history(ml.info.run_id, "train_loss")
        assert [m.value for m in history] == pytest.approx([r["train_loss"] for r in rows], rel=1e-6)
        ids |= wb["ids"] | {ml.info.run_id}
    assert len(ids) == 4
