"""`scalelab data prepare`: reading, cleaning, deduplication, splitting, manifest, and training on it."""

import argparse
import hashlib
import json
import math
import random
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalelab.cli.workflow import add_parsers
from scalelab.data import tokenizer_files
from scalelab.data.bpe import BPETokenizer
from scalelab.data.clean import clean_text
from scalelab.data.prepare import PrepareOptions, prepare
from scalelab.data.sources import find_sources, read_records
from scalelab.data.store import TokenStore
from tests.helpers import TINY, compose_config

WORDS = ("river stone light garden window paper orange quiet north market winter bridge signal copper "
         "meadow lantern harbor violet thunder candle").split()


def sentences(n: int, seed: int, prefix: str) -> list[str]:
    rng = random.Random(seed)
    return [f"{prefix} {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 24))) + "."
            for i in range(n)]


def cli(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def write_corpus(root):
    """Text files, JSONL and Parquet with duplicates (within and across files), empties, dirty text.

    Returns {input name: (path, expected counts, expected kept cleaned texts)} with min_chars=10.
    """
    root.mkdir(parents=True, exist_ok=True)
    texts_dir = root / "texts"
    texts_dir.mkdir()
    plain = sentences(6, 1, "text")
    dirty = "Cafe\u0301 line one\r\nline two\x00\x07\tend\rlast"  # NFD accent, CRLF, NUL, BEL, tab, lone CR
    files = {"a.txt": plain[0], "b.md": plain[1], "c.txt": plain[2], "d.txt": plain[0],  # d duplicates a
             "e.txt": "", "f.txt": "  tiny \n", "g.txt": dirty, "sub/h.txt": plain[3]}
    for name, text in files.items():
        (texts_dir / name).parent.mkdir(exist_ok=True)
        (texts_dir / name).write_bytes(text.encode("utf-8"))
    (texts_dir / "ignored.bin").write_bytes(b"\x00\x01binary")  # unknown extension inside a directory
    (texts_dir / ".hidden.txt").write_text("hidden files are skipped")
    text_kept = [plain[0], plain[1], plain[2], clean_text(dirty), plain[3]]

    jsonl_docs = sentences(60, 2, "json")
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(jsonl_docs)]
    lines += ["", json.dumps({"text": jsonl_docs[5]}), json.dumps({"text": None}), json.dumps({"text": "short"})]
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")  # 63 records (the blank line is none)

    parquet_docs = sentences(50, 3, "parquet")
    column = parquet_docs + [parquet_docs[0], parquet_docs[1], None, jsonl_docs[7]]  # 54 rows, 3 duplicates
    pq.write_table(pa.table({"text": column, "n": list(range(len(column)))}), root / "docs.parquet", row_group_size=16)

    return {
        "text": (texts_dir, dict(read=8, bad_records=0, too_short=2, duplicates=1, kept=5), text_kept),
        "jsonl": (root / "docs.jsonl", dict(read=63, bad_records=0, too_short=2, duplicates=1, kept=60), jsonl_docs),
        "parquet": (root / "docs.parquet", dict(read=54, bad_records=0, too_short=1, duplicates=2, kept=51),
                    parquet_docs + [jsonl_docs[7]]),
    }


def documents_of(store: TokenStore, split: str) -> list[str]:
    """The texts of a split, cut at the end-of-document ids."""
    ids = np.concatenate([np.asarray(s) for s in store.shards(split)])
    ends = np.flatnonzero(ids == store.tokenizer.eos_id)
    assert len(ends) and ends[-1] == len(ids) - 1  # every document ends with end-of-document
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [store.tokenizer.decode(ids[a:b]) for a, b in zip(starts, ends, strict=True)]


def refuse(message):
    raise ValueError(message)


@pytest.mark.parametrize("which", ["text", "jsonl", "parquet"])
def test_each_format_is_read_cleaned_and_deduplicated(tmp_path, which):
    corpus = write_corpus(tmp_path / "in")
    path, counts, kept = corpus[which]
    manifest = prepare([str(path)], tmp_path / "out", PrepareOptions(min_chars=10, val_fraction=0.3))
    docs = manifest["documents"]
    assert {k: docs[k] for k in counts} == counts
    assert docs["train"] + docs["val"] == counts["kept"] and docs["train"] > 0 and docs["val"] > 0
    store = TokenStore(tmp_path / "out")
    got = documents_of(store, "train") + documents_of(store, "val")
    assert sorted(got) == sorted(kept)  # duplicates gone, nothing else lost
    assert manifest["tokens"]["total"] == sum(len(d.encode()) + 1 for d in kept)  # bytes + one eos each


def test_all_inputs_together_make_one_deterministic_dataset_with_a_full_manifest(tmp_path):
    corpus = write_corpus(tmp_path / "in")
    inputs = [str(corpus[k][0]) for k in ("text", "jsonl", "parquet")]
    options = PrepareOptions(min_chars=10, val_fraction=0.1)
    manifest = prepare(inputs, tmp_path / "a", options)
    docs = manifest["documents"]
    # across files: jsonl_docs[7] in the Parquet file is a duplicate of the JSONL record
    assert docs == {"read": 125, "bad_records": 0, "too_short": 5, "duplicates": 5, "kept": 115,
                    "train": docs["train"], "val": docs["val"]}
    assert docs["val"] > 0 and docs["train"] + docs["val"] == 115
    names = [p["path"].split("/in/")[1] for p in manifest["inputs"]]
    assert names == ["texts/a.txt", "texts/b.md", "texts/c.txt", "texts/d.txt", "texts/e.txt", "texts/f.txt",
                     "texts/g.txt", "texts/sub/h.txt", "docs.jsonl", "docs.parquet"]
    jsonl = next(p for p in manifest["inputs"] if p["path"].endswith("docs.jsonl"))
    assert jsonl["sha256"] == hashlib.sha256((tmp_path / "in" / "docs.jsonl").read_bytes()).hexdigest()
    assert jsonl["format"] == "jsonl"
    splits = manifest["splits"]
    assert manifest["tokens"] == {"train": splits["train"]["tokens"], "val": splits["val"]["tokens"],
                                  "total": splits["train"]["tokens"] + splits["val"]["tokens"]}
    assert manifest["bytes_per_token"]["val"] == pytest.approx(splits["val"]["bytes"] / splits["val"]["tokens"])
    assert manifest["tokenizer_kind"] == "byte" and manifest["options"]["min_chars"] == 10
    # the same inputs and options give the same dataset; another seed another split of the same documents
    again = prepare(inputs, tmp_path / "b", options)
    assert again["sha256"] == manifest["sha256"]
    assert (tmp_path / "a" / "val-00000.bin").read_bytes() == (tmp_path / "b" / "val-00000.bin").read_bytes()
    other = prepare(inputs, tmp_path / "c", PrepareOptions(min_chars=10, val_fraction=0.1, seed=1))
    assert other["documents"]["kept"] == 115 and other["sha256"] != manifest["sha256"]
    val_a, val_c = (set(documents_of(TokenStore(tmp_path / d), "val")) for d in "ac")
    assert val_a != val_c


def test_cleaning_normalises_and_strips_control_characters():
    assert clean_text("Cafe\u0301") == unicodedata.normalize("NFC", "Café") == "Caf\u00e9"
    assert clean_text("a\r\nb\rc\x00d\x07e\tf\x7f\x9fg\ud800") == "a\nb\ncde\tfg"
    assert clean_text("  \n padded \t\n") == "padded"


def test_two_documents_are_enough_for_both_splits_and_one_is_refused(tmp_path):
    (tmp_path / "one.txt").write_text("the first document, long enough")
    (tmp_path / "two.txt").write_text("the second document, long enough too")
    manifest = prepare([str(tmp_path / "one.txt"), str(tmp_path / "two.txt")], tmp_path / "out")
    assert (manifest["documents"]["train"], manifest["documents"]["val"]) == (1, 1)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        prepare([str(tmp_path / "one.txt")], tmp_path / "single")
    assert not (tmp_path / "single").exists()  # nothing half-written


def test_bad_inputs_get_clear_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found: .*nowhere"):
        cli(["data", "prepare", str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "x")])
    good = sentences(30, 4, "ok")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"text": good[0]}), json.dumps({"text": good[1]}), "{not json",
                              *[json.dumps({"text": d}) for d in good[2:]]]) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON.*--skip-bad-records"):
        cli(["data", "prepare", str(bad), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    # streaming: the records before the bad line were read before the error surfaced
    seen = []
    with pytest.raises(ValueError):
        for text in read_records(find_sources([str(bad)])[0], "text", on_bad=refuse):
            seen.append(text)
    assert seen == good[:2]
    assert cli(["data", "prepare", str(bad), "--out", str(tmp_path / "x"), "--skip-bad-records"]) == 0
    docs = json.loads((tmp_path / "x" / "manifest.json").read_text())["documents"]
    assert (docs["read"], docs["bad_records"], docs["kept"]) == (31, 1, 30)
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        cli(["data", "prepare", str(bad), "--out", str(tmp_path / "x"), "--skip-bad-records"])
    wrong_field = tmp_path / "wrong.jsonl"
    wrong_field.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"wrong\.jsonl:1: no 'text' field \(fields: body\)"):
        prepare([str(wrong_field)], tmp_path / "y")
    pq.write_table(pa.table({"content": ["a", "b"], "lang": ["en", "fr"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"t\.parquet: no column 'text'; its columns: content, lang"):
        cli(["data", "prepare", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "z")])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="holds no text"):
        prepare([str(tmp_path / "empty_dir")], tmp_path / "w")


def test_bpe_tokenizer_round_trips_and_keeps_the_eos_literal_as_text(tmp_path):
    tok = BPETokenizer.train(iter(sentences(200, 5, "bpe")), vocab_size=400)
    assert tok.vocab_size <= 400 and tok.decode([tok.eos_id]) == ""
    text = "river <|endoftext|> café\n\tnaïve 日本 🎉"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eos_id not in ids
    assert len(tok.encode("river stone light garden")) < len("river stone light garden")  # merges learnt
    tokenizer_files.save(tok, tmp_path)
    loaded = tokenizer_files.load(tmp_path)
    assert loaded.kind == "bpe" and np.array_equal(loaded.encode(text), ids) and loaded.eos_id == tok.eos_id
    with pytest.raises(ValueError, match="at least 257"):
        BPETokenizer.train(iter(["x"]), vocab_size=100)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_training_runs_on_a_prepared_dataset(tmp_path, kind):
    from scalelab.train.run import run

    (tmp_path / "in").mkdir()
    docs = sentences(400, 6, "doc")
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "data"
    assert cli(["data", "prepare", str(tmp_path / "in"), "--out", str(out), "--tokenizer", kind,
                "--vocab-size", "384", "--val-fraction", "0.2", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["documents"]["kept"] == 400 and manifest["tokenizer"]["kind"] == kind
    bpt = manifest["bytes_per_token"]["val"]
    assert (bpt > 2) if kind == "bpe" else (bpt < 1)  # BPE tokens span several bytes; eos is a byte-less token
    overrides = TINY + ["data=prepared", f"data.path={out}", "data.tokens=512", "train.eval_tokens=256"]
    summary = run(compose_config(overrides), tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert math.isfinite(summary["final_eval_loss"])
    assert summary["data"]["bytes_per_token"] == pytest.approx(bpt)
    assert summary["final_eval_bpb"] == pytest.approx(summary["final_eval_loss"] / math.log(2) / bpt)
    if kind == "bpe":  # eval finds the run's dataset and its BPE tokenizer by itself
        from scalelab.infer.evaluate import evaluate

        result = evaluate(tmp_path / "run", max_tokens=256)
        assert result["data"] == str(out.resolve()) and result["loss"] == pytest.approx(summary["final_eval_loss"], abs=1e-4)
