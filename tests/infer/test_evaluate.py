"""`scalelab eval`: reproduces a run's own eval loss; whole splits, other datasets, bad inputs."""

import argparse
import json
import math
import random

import pytest

from scalelab.cli.workflow import add_parsers
from scalelab.data.pipeline import Windows
from scalelab.data.prepare import PrepareOptions, prepare
from scalelab.data.store import TokenStore
from scalelab.infer.evaluate import evaluate, find_checkpoint


def cli(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def small_dataset(path, tokenizer="byte", n=60):
    rng = random.Random(0)
    words = "def return import class self value list print".split()
    src = path.parent / f"{path.name}-src"
    src.mkdir()
    (src / "d.jsonl").write_text("".join(
        json.dumps({"text": " ".join(rng.choice(words) for _ in range(30))}) + "\n" for _ in range(n)))
    prepare([str(src)], path, PrepareOptions(tokenizer=tokenizer, vocab_size=300, val_fraction=0.3))
    return TokenStore(path)


def test_eval_reproduces_the_runs_final_eval_loss(tiny_run, tmp_path, capsys):
    run_dir, summary = tiny_run
    cfg = summary["config"]
    B, T = cfg["train"]["batch_size"], cfg["data"]["seq_len"]
    eval_tokens = cfg["train"]["eval_tokens"] // (B * T) * (B * T)  # what the run evaluated on
    out = tmp_path / "eval.json"
    assert cli(["eval", str(run_dir), "--max-tokens", str(eval_tokens), "--json", str(out), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "perplexity" in table and "bits per byte" in table
    result = json.loads(out.read_text())
    assert result["tokens"] == eval_tokens and result["split"] == "val" and result["step"] == summary["steps"]
    assert result["loss"] == pytest.approx(summary["final_eval_loss"], abs=1e-4)
    assert result["bpb"] == pytest.approx(summary["final_eval_bpb"], abs=1e-4)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_run_dirs_checkpoint_dirs_and_missing_paths_resolve(tiny_run, tmp_path):
    run_dir, summary = tiny_run
    newest = run_dir / "checkpoints" / str(summary["steps"])
    for given in (run_dir, run_dir / "checkpoints", newest):
        found = find_checkpoint(given)
        assert found.step_dir == newest.resolve() and found.run_dir == run_dir.resolve()
    with pytest.raises(FileNotFoundError, match="no such run or checkpoint"):
        cli(["eval", str(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        cli(["eval", str(tmp_path)])


def test_eval_streams_a_whole_split_of_another_dataset_whatever_the_batch(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    store = small_dataset(tmp_path / "byte")
    windows = len(Windows(store.shards("val"), 32))
    assert windows % 8 and windows % 5  # both batch sizes end on a padded, partial batch
    a = evaluate(run_dir, data=str(tmp_path / "byte"), batch_size=8)
    b = evaluate(run_dir / "checkpoints", data=str(tmp_path / "byte"), batch_size=5)
    assert a["windows"] == b["windows"] == windows and a["tokens"] == windows * 32
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)  # padding rows do not count
    assert a["bytes_per_token"] == pytest.approx(store.bytes_per_token("val"))
    train = evaluate(run_dir, data=str(tmp_path / "byte"), split="train", max_tokens=320, batch_size=8)
    assert train["windows"] == 10 and train["split"] == "train"


def test_eval_refuses_a_dataset_with_another_tokenizer(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    small_dataset(tmp_path / "bpe", tokenizer="bpe")
    with pytest.raises(ValueError, match="tokenized with bpe .* trained with byte"):
        cli(["eval", str(run_dir), "--data", str(tmp_path / "bpe")])
    with pytest.raises(ValueError, match="no split 'test'"):
        cli(["eval", str(run_dir), "--split", "test", "--max-tokens", "64"])
