"""Tokenizers that travel: any tokenizers file used as it is, scalelab's BPE as a plain tokenizer.json,
and the byte tokenizer as a Hugging Face tokenizer that reproduces its ids."""

import argparse
import hashlib
import json
import random

import numpy as np
import pytest

from scalelab.cli.workflow import add_parsers
from scalelab.data import tokenizer_files
from scalelab.data import tokenizer_files as hf_tokenizer
from scalelab.data.bpe import BPETokenizer, FileTokenizer
from scalelab.data.store import TokenStore
from scalelab.data.tokenizer import ByteTokenizer

tk = pytest.importorskip("tokenizers")

WORDS = "river stone light garden window paper orange quiet north market winter bridge signal copper".split()
TRICKY = "river <|endoftext|> café\n\tnaïve 日本 🎉  two  spaces"


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for i in range(n)]


def cli(argv):
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def prepare_jsonl(tmp_path, docs, *options) -> TokenStore:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "data"
    assert cli(["data", "prepare", str(tmp_path / "in"), "--out", str(out), "--val-fraction", "0.2",
                "--no-progress", *options]) == 0
    return TokenStore(out)


def stored_documents(store: TokenStore) -> list[tuple]:
    """Every stored document's ids, train and val, without the end-of-document separators."""
    docs = []
    for split in ("train", "val"):
        ids = np.concatenate(store.shards(split))
        ends = np.flatnonzero(ids == store.tokenizer.eos_id)
        docs += [tuple(ids[a + 1 if a >= 0 else 0:b].tolist()) for a, b in zip([-1, *ends[:-1]], ends)]
    return sorted(docs)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wordlevel_bpe_file(tmp_path, docs):
    """A `tokenizers` BPE unlike scalelab's: whitespace pre-tokenizer, an unk token, and a
    post-processor that puts <s> before every text, saved as a tokenizer.json."""
    tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    trainer = tk.trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator(docs, trainer=trainer)
    tokenizer.post_processor = tk.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    path = tmp_path / "mine" / "tokenizer.json"
    path.parent.mkdir()
    tokenizer.save(str(path))
    return path


def test_prepare_with_a_tokenizers_file_gives_its_own_ids(tmp_path):
    docs = documents(40)
    path = wordlevel_bpe_file(tmp_path, docs)
    store = prepare_jsonl(tmp_path, docs, "--tokenizer", str(path))
    reference = tk.Tokenizer.from_file(str(path))
    assert stored_documents(store) == sorted(tuple(reference.encode(d).ids) for d in docs)
    assert store.tokenizer.kind == "tokenizers" and store.tokenizer.eos_token == "</s>"  # a well-known eos
    assert store.tokenizer.eos_id == reference.token_to_id("</s>")
    manifest = store.manifest
    assert manifest["tokenizer_sha256"] == sha256(store.path / "tokenizer.json")
    assert manifest["tokenizer_file"] == {"path": str(path.resolve()), "sha256": sha256(path)}
    reloaded = tokenizer_files.load(store.path)  # the dataset's plain tokenizer.json and tokenizer_config.json
    assert reloaded.to_dict() == store.tokenizer.to_dict()
    assert reloaded.encode("north market river").tolist() == reference.encode("north market river").ids


def test_prepare_names_the_eos_token_or_refuses(tmp_path):
    docs = documents(10)
    path = wordlevel_bpe_file(tmp_path, docs)
    assert FileTokenizer.from_file(path, eos_token="<unk>").eos_id == 0
    (path.parent / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<s>"}}))
    assert FileTokenizer.from_file(path.parent).eos_token == "<s>"  # a directory, with its config
    bare = tk.Tokenizer(tk.models.BPE())
    bare.add_special_tokens(["<pad>"])
    bare.save(str(tmp_path / "bare.json"))
    with pytest.raises(ValueError, match="--eos-token"):
        FileTokenizer.from_file(tmp_path / "bare.json")
    with pytest.raises(ValueError, match="byte, bpe or a tokenizers"):
        prepare_jsonl(tmp_path, docs, "--tokenizer", str(tmp_path / "missing.json"))


def test_scalelab_bpe_is_saved_as_a_plain_tokenizer_json(tmp_path):
    docs = documents(60, seed=1)
    store = prepare_jsonl(tmp_path, docs, "--tokenizer", "bpe", "--vocab-size", "300")
    ours = store.tokenizer
    plain = tk.Tokenizer.from_file(str(store.path / "tokenizer.json"))
    text = "north market garden, copper bridge"
    assert plain.encode(text).ids == ours.encode(text).tolist() and plain.token_to_id("<|endoftext|>") == ours.eos_id
    assert store.manifest["tokenizer_sha256"] == sha256(store.path / "tokenizer.json")
    assert stored_documents(store) == sorted(tuple(ours.encode(d).tolist()) for d in docs)
    reloaded = tokenizer_files.load(store.path)
    assert reloaded.kind == "bpe" and reloaded.to_dict() == store.manifest["tokenizer"]
    assert np.array_equal(reloaded.encode(TRICKY), ours.encode(TRICKY))  # the eos literal stays text
    legacy = tmp_path / "legacy"  # datasets written before: scalelab's JSON around the BPE
    legacy.mkdir()
    (legacy / "tokenizer.json").write_text(json.dumps(ours.to_dict()))
    assert tokenizer_files.load(legacy).to_dict() == ours.to_dict()


def test_tokenizers_reach_transformers_with_scalelab_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    bpe = BPETokenizer.train(iter(documents(60, seed=2)), vocab_size=300)
    for name, ours in (("byte", ByteTokenizer()), ("bpe", bpe)):
        directory = tmp_path / name
        hf_tokenizer.save_hf_tokenizer(ours, directory, model_max_length=64)
        theirs = transformers.AutoTokenizer.from_pretrained(directory)
        assert theirs.eos_token_id == ours.eos_id and len(theirs) == ours.vocab_size
        assert theirs(TRICKY)["input_ids"] == ours.encode(TRICKY).tolist()  # literal eos stays text
        assert theirs.decode(ours.encode(TRICKY)) == TRICKY
        loaded = hf_tokenizer.load_hf_tokenizer(directory)
        assert loaded.kind == ours.kind and loaded.to_dict() == ours.to_dict()
    plain = tk.Tokenizer.from_file(str(tmp_path / "byte" / "tokenizer.json"))
    text = TRICKY.replace("<|endoftext|>", "")
    assert plain.encode(text).ids == list(text.encode("utf-8")) == ByteTokenizer().encode(text).tolist()
    assert plain.decode(list(range(256))) == ByteTokenizer().decode(range(256))  # every byte, invalid UTF-8 too
