"""Byte-level BPE trained locally with Hugging Face `tokenizers`.

The base alphabet is the 256 bytes (GPT-2's byte-to-unicode mapping), so every text encodes and
decodes back exactly; merges are learnt from the prepared corpus up to `vocab_size`. One special
token, `<|endoftext|>`, separates documents: its id is `eos_id`. Inside documents that literal
string is ordinary text (the tokenizer never turns text into the special token).

The whole trained tokenizer (its `tokenizers` JSON) is kept inside `to_dict()`, so it travels in
the dataset's `manifest.json` and the checkpoints' metadata. Beside a dataset it is saved as a plain
`tokenizers` file (`to_json()`), which `tokenizers.Tokenizer.from_file` and, with the
tokenizer_config.json written next to it, `transformers.AutoTokenizer` open as they are.

`FileTokenizer` wraps any other `tokenizers` file (`scalelab data prepare --tokenizer FILE`) and
encodes exactly as `Tokenizer.from_file(FILE).encode(text).ids` does: its post-processor (BOS
tokens, say) and its special tokens apply, and one of its tokens is named end of document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

EOS_TOKEN = "<|endoftext|>"
MIN_VOCAB = 257  # 256 bytes + end of document
# end-of-document tokens of common tokenizers, tried in order when a file's tokenizer names none
KNOWN_EOS_TOKENS = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "<|im_end|>", "[SEP]")


def require_tokenizers():
    try:
        import tokenizers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("BPE tokenizers need the `tokenizers` package: pip install tokenizers") from exc
    return tokenizers


class BPETokenizer:
    kind = "bpe"
    # "<|endoftext|>" written in a document stays text; `tokenizers` does not save this flag, so the
    # Hugging Face export writes it as tokenizer_config.json's `split_special_tokens`
    split_special_tokens = True

    def __init__(self, tokenizer, eos_token: str = EOS_TOKEN):
        self._tok = tokenizer
        self._tok.encode_special_tokens = self.split_special_tokens
        self.eos_token = eos_token
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"the {self.kind} tokenizer has no {eos_token!r} token")
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
        tk = require_tokenizers()
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

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok

    def to_json(self) -> str:
        """The plain `tokenizers` JSON, as `Tokenizer.from_str` / `from_file` read it."""
        return self._tok.to_str()

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eos_id": self.eos_id,
                "eos_token": self.eos_token, "tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, spec: dict) -> BPETokenizer:
        if "tokenizer" not in spec:
            raise ValueError("a BPE tokenizer spec needs its trained `tokenizer` (the tokenizers JSON)")
        tk = require_tokenizers()
        made = cls(tk.Tokenizer.from_str(json.dumps(spec["tokenizer"])), spec.get("eos_token", EOS_TOKEN))
        if (made.vocab_size, made.eos_id) != (spec["vocab_size"], spec["eos_id"]):
            raise ValueError(f"BPE tokenizer spec is inconsistent: vocab_size/eos_id {spec['vocab_size']}/"
                             f"{spec['eos_id']} recorded, {made.vocab_size}/{made.eos_id} in the tokenizer")
        return made


class FileTokenizer(BPETokenizer):
    """Any `tokenizers` file, used as it is: special tokens written in a text are special tokens."""

    kind = "tokenizers"
    split_special_tokens = False

    @classmethod
    def from_file(cls, path: str | Path, eos_token: str | None = None) -> FileTokenizer:
        """A tokenizer.json, or a directory holding one (a Hugging Face model or tokenizer directory).

        The end-of-document token is `eos_token`, else the `eos_token` of a tokenizer_config.json
        beside the file, else the first of KNOWN_EOS_TOKENS that the tokenizer has.
        """
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"--tokenizer: no tokenizer file {file} (give byte, bpe, or a tokenizers "
                                    f"tokenizer.json)")
        tk = require_tokenizers()
        try:
            tokenizer = tk.Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise ValueError(f"--tokenizer: {file} is not a tokenizers file ({exc})") from exc
        eos = eos_token or configured_eos_token(file.parent) or _known_eos_token(tokenizer)
        if eos is None:
            raise ValueError(f"--tokenizer: {file} has none of the end-of-document tokens "
                             f"{', '.join(KNOWN_EOS_TOKENS)}; name one with --eos-token")
        return cls(tokenizer, eos)


def configured_eos_token(directory: Path) -> str | None:
    """The `eos_token` of a Hugging Face tokenizer_config.json (or special_tokens_map.json) in `directory`."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = Path(directory) / name
        if file.is_file():
            eos = json.loads(file.read_text()).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if eos:
                return eos
    return None


def _known_eos_token(tokenizer) -> str | None:
    return next((t for t in KNOWN_EOS_TOKENS if tokenizer.token_to_id(t) is not None), None)
