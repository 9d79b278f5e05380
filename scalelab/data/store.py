"""The on-disk token store that every data source ends up as.

A prepared dataset is a directory:

    manifest.json     format, dtype, tokenizer, and per split: shard files, documents, tokens, bytes
    tokenizer.json    the tokenizer (see scalelab.data.tokenizer); for BPE and tokenizers files the plain
                      `tokenizers` file, with tokenizer_config.json and special_tokens_map.json beside it
    train-00000.bin   raw token ids (manifest dtype), documents separated by the end-of-document id
    val-00000.bin     the held-out split, split by document

Shards are read through `np.memmap`, so random access costs no memory and no start-up time. A
dataset at a URL (`s3://...`, `gs://...`) is downloaded into its local mirror first (scalelab.paths:
only files the store has replaced since are downloaded again) and read from there.
Writers build the directory under a temporary name and rename it into place, so a reader never sees
a half-written dataset (and concurrent writers of the same cache simply race to an identical result).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from scalelab import paths
from scalelab.data import tokenizer as tokenizers
from scalelab.data import tokenizer_files

FORMAT = "scalelab-tokens-v1"
MANIFEST = "manifest.json"
SHARD_TOKENS = 64 * 1024 * 1024  # tokens per shard file


def dtype_for(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"


class SplitWriter:
    """Appends documents (already tokenized) to one split's shard files, streaming."""

    def __init__(self, directory: Path, split: str, dtype: str, eos_id: int):
        self.directory, self.split, self.dtype, self.eos_id = directory, split, np.dtype(dtype), eos_id
        self.files: list[str] = []
        self.documents = self.tokens = self.bytes = 0
        self._handle = None
        self._in_shard = 0

    def add(self, ids: np.ndarray, n_bytes: int) -> None:
        if self._handle is None or self._in_shard >= SHARD_TOKENS:
            self._open_next()
        data = np.concatenate([np.asarray(ids, dtype=self.dtype), np.array([self.eos_id], self.dtype)])
        self._handle.write(data.tobytes())
        self._in_shard += len(data)
        self.documents += 1
        self.tokens += len(data)
        self.bytes += n_bytes

    def _open_next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"{self.split}-{len(self.files):05d}.bin"
        self.files.append(name)
        self._handle = open(self.directory / name, "wb")
        self._in_shard = 0

    def close(self) -> dict:
        if self._handle is not None:
            self._handle.close()
        return {"files": self.files, "documents": self.documents, "tokens": self.tokens, "bytes": self.bytes}


class StoreBuilder:
    """Context manager that writes a store into a temp dir and renames it to `path` on success."""

    def __init__(self, path: str | Path, tokenizer, extra: dict | None = None):
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.extra = extra or {}
        self.dtype = dtype_for(tokenizer.vocab_size)

    def __enter__(self) -> StoreBuilder:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        self.writers = {s: SplitWriter(self.tmp, s, self.dtype, self.tokenizer.eos_id) for s in ("train", "val")}
        return self

    def add(self, split: str, ids: np.ndarray, n_bytes: int) -> None:
        self.writers[split].add(ids, n_bytes)

    def __exit__(self, exc_type, exc, tb) -> None:
        splits = {s: w.close() for s, w in self.writers.items()}
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        manifest = {"format": FORMAT, "dtype": self.dtype, "tokenizer": self.tokenizer.to_dict(),
                    "splits": splits, **self.extra}
        for split, info in splits.items():
            if info["tokens"] == 0:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise ValueError(f"the {split} split is empty: not enough documents to split")
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tokenizer_files.save(self.tokenizer, self.tmp)
        try:
            os.rename(self.tmp, self.path)
        except OSError:  # another writer finished first with the same content
            shutil.rmtree(self.tmp, ignore_errors=True)
            if not (self.path / MANIFEST).exists():
                raise


class TokenStore:
    """A prepared dataset opened for reading."""

    def __init__(self, path: str | Path):
        self.url = str(path) if paths.is_url(path) else None  # where it was read from, if not here
        self.path = paths.fetch(self.url) if self.url else Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(
                f"{self.url or self.path} is not a prepared dataset (no {MANIFEST}); create one with "
                "`scalelab data prepare`"
            )
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{manifest_path}: unknown format {self.manifest.get('format')!r}, expected {FORMAT}")
        self.tokenizer = tokenizers.from_dict(self.manifest["tokenizer"])

    def shards(self, split: str) -> list[np.ndarray]:
        info = self.manifest["splits"][split]
        return [np.memmap(self.path / f, dtype=self.manifest["dtype"], mode="r") for f in info["files"]]

    def tokens(self, split: str) -> int:
        return self.manifest["splits"][split]["tokens"]

    def bytes_per_token(self, split: str = "val") -> float:
        info = self.manifest["splits"][split]
        return info["bytes"] / info["tokens"]
