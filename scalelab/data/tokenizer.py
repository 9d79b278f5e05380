"""Tokenizers: byte-level (the default) and, for prepared datasets, BPE or any `tokenizers` file.

Every tokenizer turns text into a uint16/uint32 id array and back, knows its vocabulary size and
end-of-document id, and saves itself as JSON beside a dataset and inside every checkpoint, so that
evaluation and generation decode with the tokenizer the model was trained with.

Beside a dataset, `tokenizer.json` is scalelab's own small JSON for the byte tokenizer and, for
the others, the plain `tokenizers` file with a Hugging Face tokenizer_config.json next to it
(`scalelab.data.tokenizer_files`); `tokenizer_files.load` reads both, and older datasets whose tokenizer.json wraps a
BPE in scalelab's JSON. `sha256` hashes that file's text: the tokenizer's identity in manifests.
"""

from __future__ import annotations

import hashlib
import json

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
    if spec["kind"] == "tokenizers":
        from scalelab.data.bpe import FileTokenizer

        return FileTokenizer.from_dict(spec)
    raise ValueError(f"unknown tokenizer kind {spec['kind']!r}")


def file_text(tokenizer) -> str:
    """The text of the tokenizer.json that `save` writes."""
    if tokenizer.kind == "byte":
        return json.dumps(tokenizer.to_dict())
    return tokenizer.to_json()


def sha256(tokenizer) -> str:
    """The sha256 of the tokenizer's tokenizer.json: what `sha256sum DATASET/tokenizer.json` prints."""
    return hashlib.sha256(file_text(tokenizer).encode("utf-8")).hexdigest()
