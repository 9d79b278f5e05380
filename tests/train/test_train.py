import json
import math
import struct

import pytest

from scalelab import ledger
from scalelab.train.run import run
from scalelab.train.runlog import read_metrics, read_summary
from tests.helpers import TINY, compose_config

METRIC_KEYS = {"step", "tokens", "flops", "train_loss", "lr", "grad_norm", "tokens_per_second", "mfu"}
SUMMARY_KEYS = {"status", "model", "params", "params_total", "tokens", "flops", "flops_per_token",
                "final_eval_loss", "final_eval_bpb", "steps", "wall_seconds", "tokens_per_second", "mfu",
                "config", "versions"}


def test_short_run_completes_and_its_loss_falls(tiny_run):
    run_dir, summary = tiny_run
    rows = read_metrics(run_dir)
    assert summary["status"] == "completed" and read_summary(run_dir)["status"] == "completed"
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.5
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]  # eval at steps 4, 8, 12
    assert summary["final_eval_loss"] == evals[-1] < math.log(257)


def tensorboard_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] read back from the run's TensorBoard event files (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list] = {}
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_run_files_follow_the_contract(tiny_run):
    run_dir, summary = tiny_run
    rows = read_metrics(run_dir)
    assert all(METRIC_KEYS <= set(r) for r in rows)
    on_disk = read_summary(run_dir)
    assert SUMMARY_KEYS <= set(on_disk)
    assert (run_dir / "checkpoints" / "12").is_dir()
    assert tensorboard_scalars(run_dir)["train_loss"] == [(r["step"], pytest.approx(r["train_loss"])) for r in rows]
    # the ledger is the one source of N, C and FLOPs per token
    shape = ledger.Shape(d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=64, vocab=264, seq_len=32)
    assert on_disk["params"] == ledger.non_embedding_params(shape)
    assert on_disk["flops_per_token"] == ledger.flops_per_token(shape)
    assert on_disk["tokens"] == 12 * 8 * 32 == rows[-1]["tokens"]
    assert on_disk["flops"] == on_disk["tokens"] * on_disk["flops_per_token"] == rows[-1]["flops"]
    bpb = on_disk["final_eval_loss"] / math.log(2) / on_disk["data"]["bytes_per_token"]
    assert on_disk["final_eval_bpb"] == pytest.approx(bpb)
    assert 0 < on_disk["mfu"] < 1 and on_disk["tokens_per_second"] > 0
    assert on_disk["config"]["model"]["d_model"] == 32
    json.dumps(on_disk)  # valid JSON, no NaN


def test_grad_accum_and_bf16_train_too(tmp_path):
    summary = run(compose_config(TINY + ["train.grad_accum=2", "train.batch_size=16", "train.precision=bf16", "data.tokens=2048"]),
                  tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 4
    assert math.isfinite(summary["final_eval_loss"])


def test_a_failing_run_records_failed_with_its_traceback(tmp_path, monkeypatch):
    from scalelab.train import loop

    def broken(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(loop.pipeline, "eval_batches", broken)
    with pytest.raises(RuntimeError):
        run(compose_config(TINY), tmp_path)
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed"
    assert "disk on fire" in summary["error"]["message"] and "Traceback" in summary["error"]["traceback"]
