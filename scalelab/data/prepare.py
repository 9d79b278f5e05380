"""`scalelab data prepare`: raw text in, a token store (scalelab.data.store) out.

    inputs -> records (sources.py) -> cleaned (clean.py) -> drop too short -> drop exact duplicates
           -> tokenize (byte, BPE trained here, or a tokenizers file) -> train / val by document hash
           -> StoreBuilder

Everything streams: one record (or one Parquet row batch, or one encoding chunk) is in memory at a
time, plus a 16-byte digest per kept document for deduplication. The byte tokenizer needs one pass
over the inputs; BPE needs two: the first trains the tokenizer on the training documents, the
second encodes.

The split is by document: a document goes to validation when a hash of its cleaned text (salted
with --seed) falls below --val-fraction, so it does not depend on input order. With two or more
documents neither split is left empty: the document nearest the boundary is moved if needed.

The manifest records, besides what every store has: the input files with their sha256, the
options, document counts (read, kept, duplicates, too_short, bad_records, per split), token
counts and bytes per token (UTF-8 bytes of the cleaned text per token, end-of-document counted as
a token), which is what keeps bits per byte comparable across tokenizers, and the tokenizer's hash
(`tokenizer_sha256`, of the dataset's tokenizer.json; for --tokenizer FILE also the file's own).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from scalelab import paths
from scalelab.data import tokenizer as tokenizers
from scalelab.data.clean import clean_text, document_digest, split_score
from scalelab.data.sources import Source, find_sources, read_records
from scalelab.data.store import MANIFEST, StoreBuilder, TokenStore
from scalelab.data.tokenizer import ByteTokenizer

ENCODE_CHUNK = 256  # documents per tokenizer call (BPE encodes a chunk in parallel)


@dataclass
class PrepareOptions:
    tokenizer: str = "byte"  # byte | bpe | a tokenizers tokenizer.json (or a directory holding one), used as is
    eos_token: str | None = None  # tokenizer files: the end-of-document token (default: see FileTokenizer)
    vocab_size: int = 8192  # bpe only; the trained vocabulary may come out smaller on a small corpus
    text_field: str = "text"  # JSONL field / Parquet column holding the text
    min_chars: int = 1  # cleaned documents shorter than this (in characters) are dropped
    val_fraction: float = 0.05
    skip_bad_records: bool = False  # count unreadable records instead of stopping at the first
    seed: int = 0  # salts the split hash: another seed, another (equally deterministic) split
    overwrite: bool = False  # replace an existing dataset at --out
    progress: bool | None = None  # None: a progress bar when stderr is a terminal

    def check(self) -> None:
        if self.tokenizer not in ("byte", "bpe") and not Path(self.tokenizer).exists():
            raise ValueError(f"--tokenizer must be byte, bpe or a tokenizers tokenizer.json file; got {self.tokenizer!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must lie in (0, 1); got {self.val_fraction}")
        if self.min_chars < 0:
            raise ValueError(f"--min-chars must be zero or positive; got {self.min_chars}")


@dataclass
class DocumentCounts:
    read: int = 0  # records met, bad ones included
    bad_records: int = 0
    too_short: int = 0
    duplicates: int = 0
    kept: int = 0


@dataclass
class CleanDocuments:
    """One pass over the inputs, yielding (cleaned text, digest) of every document that is kept."""

    sources: list[Source]
    options: PrepareOptions
    advance: object = lambda n: None  # progress callback: n more input bytes read
    counts: DocumentCounts = field(default_factory=DocumentCounts)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        self.counts = counts = DocumentCounts()
        seen: set[bytes] = set()
        for source in self.sources:
            for raw in read_records(source, self.options.text_field, self._bad_record, self.advance):
                counts.read += 1
                text = clean_text(raw)
                if len(text) < max(1, self.options.min_chars):
                    counts.too_short += 1
                    continue
                digest = document_digest(text)
                if digest in seen:
                    counts.duplicates += 1
                    continue
                seen.add(digest)
                counts.kept += 1
                yield text, digest

    def _bad_record(self, message: str) -> None:
        if not self.options.skip_bad_records:
            raise ValueError(f"{message} (--skip-bad-records skips such records and counts them)")
        self.counts.read += 1
        self.counts.bad_records += 1


class SplitAssigner:
    """Train or val by score, holding back one document per split so that neither ends up empty.

    The held train document is the one with the lowest score (the nearest to validation), the held
    val document the one with the highest; `finish` moves one across if the other split got none.
    """

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction
        self.held: dict[str, tuple[float, object] | None] = {"train": None, "val": None}
        self.assigned = {"train": 0, "val": 0}

    def assign(self, score: float, item) -> list[tuple[str, object]]:
        split = "val" if score < self.val_fraction else "train"
        self.assigned[split] += 1
        rank = score if split == "train" else -score
        held = self.held[split]
        if held is None:
            self.held[split] = (rank, item)
            return []
        if rank < held[0]:
            self.held[split] = (rank, item)
            return [(split, held[1])]
        return [(split, item)]

    def finish(self) -> list[tuple[str, object]]:
        out = []
        for split, other in (("train", "val"), ("val", "train")):
            held = self.held[split]
            if held is not None:
                moves = self.held[other] is None and self.assigned[split] >= 2
                out.append((other if moves else split, held[1]))
        return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Bar:
    """A rich progress bar over input bytes on a terminal; nothing elsewhere."""

    def __init__(self, enabled: bool, total_bytes: int):
        self.enabled, self.total = enabled, total_bytes
        self._progress = None

    def __enter__(self) -> _Bar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self._progress.start()
        return self

    def task(self, description: str):
        if self._progress is None:
            return lambda n: None
        task_id = self._progress.add_task(description, total=self.total)
        return lambda n: self._progress.advance(task_id, n)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _train_tokenizer(sources, options: PrepareOptions, bar: _Bar):
    if options.tokenizer == "byte":
        return ByteTokenizer()
    from scalelab.data.bpe import BPETokenizer, FileTokenizer

    if options.tokenizer != "bpe":
        return FileTokenizer.from_file(options.tokenizer, options.eos_token)

    documents = CleanDocuments(sources, options, bar.task("pass 1/2: training BPE"))
    train_texts = (text for text, digest in documents
                   if split_score(digest, options.seed) >= options.val_fraction)
    return BPETokenizer.train(train_texts, options.vocab_size)


def _encoded(documents: CleanDocuments, tokenizer) -> Iterator[tuple[bytes, object, int]]:
    """(digest, token ids, UTF-8 bytes) per document, encoding chunks of documents at once."""
    encode_batch = getattr(tokenizer, "encode_batch", None) or (lambda texts: [tokenizer.encode(t) for t in texts])
    chunk: list[tuple[str, bytes]] = []
    for item in documents:
        chunk.append(item)
        if len(chunk) == ENCODE_CHUNK:
            yield from _encode_chunk(chunk, encode_batch)
            chunk = []
    yield from _encode_chunk(chunk, encode_batch)


def _encode_chunk(chunk, encode_batch):
    if not chunk:
        return
    for (text, digest), ids in zip(chunk, encode_batch([text for text, _ in chunk]), strict=True):
        yield digest, ids, len(text.encode("utf-8"))


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_dir() and ((out / MANIFEST).exists() or not any(out.iterdir())):
        shutil.rmtree(out)
    else:
        raise ValueError(f"{out} exists and is not a prepared dataset; refusing to replace it")


def prepare(inputs: list[str], out: str | Path, options: PrepareOptions | None = None) -> dict:
    """Build a prepared dataset at `out` (a directory or a URL) from `inputs`; returns its manifest."""
    options = options or PrepareOptions()
    options.check()
    if paths.is_url(out):
        return _prepare_to_url(inputs, str(out), options)
    out = Path(out)
    sources = find_sources(list(inputs))
    _check_out(out, options.overwrite)
    show = sys.stderr.isatty() if options.progress is None else options.progress
    with _Bar(show, sum(s.size for s in sources)) as bar:
        tokenizer = _train_tokenizer(sources, options, bar)
        documents = CleanDocuments(sources, options, bar.task(
            "pass 2/2: tokenizing" if options.tokenizer == "bpe" else "tokenizing"))
        content = hashlib.sha256(json.dumps([tokenizer.to_dict(), options.val_fraction, options.seed]).encode())
        splitter = SplitAssigner(options.val_fraction)
        with StoreBuilder(out, tokenizer, extra={}) as builder:
            for digest, ids, n_bytes in _encoded(documents, tokenizer):
                content.update(digest)
                for split, (doc_ids, doc_bytes) in splitter.assign(split_score(digest, options.seed), (ids, n_bytes)):
                    builder.add(split, doc_ids, doc_bytes)
            counts = documents.counts
            if counts.kept < 2:
                raise ValueError(
                    f"{counts.kept} document(s) left after cleaning (of {counts.read} read: {counts.bad_records} "
                    f"bad, {counts.too_short} shorter than --min-chars={options.min_chars}, {counts.duplicates} "
                    f"duplicates); at least 2 are needed to split into train and validation")
            for split, (doc_ids, doc_bytes) in splitter.finish():
                builder.add(split, doc_ids, doc_bytes)
            builder.extra.update(_manifest_extras(sources, options, counts, builder, content.hexdigest()))
    return TokenStore(out).manifest


def _prepare_to_url(inputs: list[str], url: str, options: PrepareOptions) -> dict:
    """Prepared in the URL's local mirror, then uploaded with manifest.json last (after the old
    manifest is deleted): a reader that finds a manifest finds every file it names."""
    existing = paths.listing(url)
    if existing and not options.overwrite:
        raise ValueError(f"{url} already exists; pass --overwrite to replace it")
    if existing and MANIFEST not in existing:
        raise ValueError(f"{url} exists and is not a prepared dataset; refusing to replace it")
    local = paths.mirror_dir(url)
    shutil.rmtree(local, ignore_errors=True)
    manifest = prepare(inputs, local, replace(options, overwrite=False))
    if existing:
        paths.delete(url, [MANIFEST])
    names = sorted(set(paths.local_files(local)) - {MANIFEST})
    paths.upload(local, url, [*names, MANIFEST])
    paths.delete(url, sorted(set(existing) - set(names) - {MANIFEST}))
    return manifest


def _tokenizer_file(options: PrepareOptions) -> dict:
    """For --tokenizer FILE: the file used and its own sha256 (its bytes, before `tokenizers` re-serialises it)."""
    if options.tokenizer in ("byte", "bpe"):
        return {}
    path = Path(options.tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    return {"tokenizer_file": {"path": str(path.resolve()), "sha256": file_sha256(path)}}


def _manifest_extras(sources, options: PrepareOptions, counts: DocumentCounts, builder, content: str) -> dict:
    writers = builder.writers
    split_docs = {s: w.documents for s, w in writers.items()}
    tokens = {s: w.tokens for s, w in writers.items()}
    total_bytes = sum(w.bytes for w in writers.values())
    return {
        "source": "prepared",
        "inputs": [{"path": str(s.path.resolve()), "format": s.format, "bytes": s.size,
                    "sha256": file_sha256(s.path)} for s in sources],
        "options": {k: v for k, v in asdict(options).items() if k not in ("progress", "overwrite")},
        "tokenizer_kind": builder.tokenizer.kind,
        "tokenizer_sha256": tokenizers.sha256(builder.tokenizer),
        **_tokenizer_file(options),
        "vocab_size": builder.tokenizer.vocab_size,
        "documents": {**asdict(counts), **split_docs},
        "tokens": {**tokens, "total": sum(tokens.values())},
        "bytes_per_token": {**{s: (w.bytes / w.tokens if w.tokens else None) for s, w in writers.items()},
                            "all": total_bytes / max(1, sum(tokens.values()))},
        "val_fraction": options.val_fraction,
        "sha256": content,  # identity of tokenizer, split and kept documents (summary.json's data.sha256)
    }
