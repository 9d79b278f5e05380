"""Byte-level BPE trained locally with Hugging Face `tokenizers`.

The base alphabet is the 256 bytes (GPT-2's byte-to-unicode mapping), so every text encodes and
decodes back exactly; merges are learnt from the prepared corpus up to `vocab_size`. One special
token, `<|endoftext|>`, separates documents: its id is `eos_id`. Inside documents that literal
string is ordinary text (the tokenizer never turns text into the special token).

The whole trained tokenizer (its `tokenizers` JSON) is kept inside `to_dict()`, so it travels in
the dataset's `manifest.json` and `tokenizer.json` and needs no other file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np

EOS_TOKEN = "<|endoftext|>"
MIN_VOCAB = 257  # 256 bytes + end of document


def _require_tokenizers():
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("BPE tokenizers need the `tokenizers` package: pip install tokenizers") from exc
    return tokenizers


class BPETokenizer:
    kind = "bpe"

    def __init__(self, tokenizer, eos_token: str = EOS_TOKEN):
        self._tok = tokenizer
        self._tok.encode_special_tokens = True  # "<|endoftext|>" written in a document stays text
        self.eos_token = eos_token
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"the BPE tokenizer has no {eos_token!r} token")
        self.eos_id = int(eos_id)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self._dtype = np.uint16 if self.vocab_size <= 65535 else np.uint32

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = False,
              length: int | None = None) -> BPETokenizer:
        """Learn merges from an iterator of documents (streamed: `tokenizers` keeps word counts only)."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"--vocab-size must be at least {MIN_VOCAB} (256 bytes + end of document); "
                             f"got {vocab_size}")
        tk = _require_tokenizers()
        tokenizer = tk.Tokenizer(tk.models.BPE())
        tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOS_TOKEN], show_progress=show_progress,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(tokenizer)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=self._dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Several documents at once (the Rust side encodes them in parallel)."""
        return [np.asarray(e.ids, dtype=self._dtype) for e in self._tok.encode_batch_fast(texts)]

    def decode(self, ids) -> str:
        """Text of the ids; the end-of-document id and ids outside the vocabulary are dropped."""
        kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) != self.eos_id]
        return self._tok.decode(kept, skip_special_tokens=True)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "eos_token": self.eos_token, "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, spec: dict) -> BPETokenizer:
        if "tokenizer" not in spec:
            raise ValueError("a BPE tokenizer spec needs its trained `tokenizer` (the tokenizers JSON)")
        tk = _require_tokenizers()
        made = cls(tk.Tokenizer.from_str(json.dumps(spec["tokenizer"])), spec.get("eos_token", EOS_TOKEN))
        if (made.vocab_size, made.eos_id) != (spec["vocab_size"], spec["eos_id"]):
            raise ValueError(f"BPE tokenizer spec is inconsistent: vocab_size/eos_id {spec['vocab_size']}/"
                             f"{spec['eos_id']} recorded, {made.vocab_size}/{made.eos_id} in the tokenizer")
        return made
