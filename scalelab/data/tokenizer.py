"""Tokenizers: byte-level (the default) and, for prepared datasets, BPE.

Every tokenizer turns text into a uint16/uint32 id array and back, knows its vocabulary size and
end-of-document id, and saves itself as JSON beside a dataset and inside every checkpoint, so that
evaluation and generation decode with the tokenizer the model was trained with.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes 0..255 are the ids; one special token, end of document, is id 256."""

    kind = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id}


def from_dict(spec: dict):
    if spec["kind"] == "byte":
        return ByteTokenizer()
    if spec["kind"] == "bpe":
        from scalelab.data.bpe import BPETokenizer

        return BPETokenizer.from_dict(spec)
    raise ValueError(f"unknown tokenizer kind {spec['kind']!r}")


def save(tokenizer, directory: str | Path) -> Path:
    path = Path(directory) / TOKENIZER_FILE
    path.write_text(json.dumps(tokenizer.to_dict()))
    return path


def load(directory: str | Path):
    return from_dict(json.loads((Path(directory) / TOKENIZER_FILE).read_text()))
