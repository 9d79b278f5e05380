"""scalelab tokenizers in the Hugging Face format, and back.

A Hugging Face tokenizer directory holds `tokenizer.json` (the `tokenizers` library's own file,
which `tokenizers.Tokenizer.from_file` opens) plus `tokenizer_config.json` and
`special_tokens_map.json`, with which `transformers.AutoTokenizer` / `PreTrainedTokenizerFast` load
it. `save_hf_tokenizer` writes the three for any scalelab tokenizer:

* byte: a byte-level BPE without merges whose vocabulary is GPT-2's 256 byte characters in byte
  order, so that every UTF-8 byte b is token id b, and `<|endoftext|>` is id 256, as in
  `scalelab.data.tokenizer.ByteTokenizer`;
* bpe (trained by `scalelab data prepare`) and tokenizers files (`--tokenizer FILE`): their
  `tokenizers` JSON as it is.

`tokenizers` does not save whether special tokens written in a text stay text (scalelab's byte and
BPE tokenizers keep "<|endoftext|>" in a document as ordinary text), so that goes into
tokenizer_config.json as `split_special_tokens`, which transformers honours. Plain
`Tokenizer.from_file(...).encode(text)` turns such a literal into the special token; texts without
it encode to the same ids either way.
"""

from __future__ import annotations

import json
from pathlib import Path

from scalelab.data import tokenizer as tokenizers
from scalelab.data.bpe import (
    EOS_TOKEN,
    BPETokenizer,
    FileTokenizer,
    configured_eos_token,
    require_tokenizers,
)
from scalelab.data.tokenizer import ByteTokenizer

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
FILES = (TOKENIZER_JSON, TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP)


def gpt2_byte_chars() -> list[str]:
    """The printable character GPT-2's byte-level mapping (`pre_tokenizers.ByteLevel`) gives each byte,
    in byte order: printable Latin-1 bytes stand for themselves, the other 68 for 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def byte_level_tokenizer():
    """scalelab's byte tokenizer as a `tokenizers.Tokenizer`: ids 0..255 are bytes, 256 end of document."""
    tk = require_tokenizers()
    vocab = {char: b for b, char in enumerate(gpt2_byte_chars())}
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.add_special_tokens([tk.AddedToken(EOS_TOKEN, special=True, normalized=False)])
    if tokenizer.token_to_id(EOS_TOKEN) != ByteTokenizer.eos_id:  # pragma: no cover - a tokenizers change
        raise RuntimeError("the byte-level tokenizer did not put end of document at id 256")
    return tokenizer


def _backend(tokenizer):
    """(tokenizers.Tokenizer, end-of-document token, split_special_tokens) of a scalelab tokenizer."""
    if tokenizer.kind == "byte":
        return byte_level_tokenizer(), EOS_TOKEN, True
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.backend, tokenizer.eos_token, tokenizer.split_special_tokens
    raise ValueError(f"no Hugging Face form for a {tokenizer.kind!r} tokenizer")


def tokenizer_files(tokenizer, model_max_length: int | None = None) -> dict[str, str]:
    """{file name: text} of the Hugging Face tokenizer files of a scalelab tokenizer."""
    backend, eos, split = _backend(tokenizer)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "split_special_tokens": split,
        # transformers' default would strip spaces before punctuation when decoding
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    return {
        TOKENIZER_JSON: backend.to_str(),
        TOKENIZER_CONFIG: json.dumps(config, indent=2) + "\n",
        SPECIAL_TOKENS_MAP: json.dumps({"eos_token": eos}, indent=2) + "\n",
    }


def save_hf_tokenizer(tokenizer, directory: str | Path, model_max_length: int | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in tokenizer_files(tokenizer, model_max_length).items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written


def load_hf_tokenizer(directory: str | Path, eos_token: str | None = None):
    """The scalelab tokenizer of a Hugging Face tokenizer directory (or a tokenizer.json file).

    scalelab's own byte tokenizer comes back as `ByteTokenizer`; a tokenizer whose config sets
    `split_special_tokens` as `BPETokenizer` (special-token literals stay text); any other as
    `FileTokenizer`. The end-of-document token is `eos_token`, else the config's `eos_token`, else
    config.json's `eos_token_id`, else a well-known one (`FileTokenizer.from_file`).
    """
    path = Path(directory)
    file = path / TOKENIZER_JSON if path.is_dir() else path
    folder = file.parent
    eos_token = eos_token or configured_eos_token(folder) or _model_eos_token(folder, file)
    made = FileTokenizer.from_file(file, eos_token)
    if _is_byte_tokenizer(made):
        return ByteTokenizer()
    if _split_special_tokens(folder):
        return BPETokenizer(made.backend, made.eos_token)
    return made


def _split_special_tokens(folder: Path) -> bool:
    config = folder / TOKENIZER_CONFIG
    return bool(config.is_file() and json.loads(config.read_text()).get("split_special_tokens"))


def _model_eos_token(folder: Path, file: Path) -> str | None:
    """The token of config.json's `eos_token_id` (the first, when it lists several)."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    eos_id = json.loads(config.read_text()).get("eos_token_id")
    eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
    if not isinstance(eos_id, int):
        return None
    return require_tokenizers().Tokenizer.from_file(str(file)).id_to_token(eos_id)


def _is_byte_tokenizer(made: FileTokenizer) -> bool:
    """Whether the tokenizer encodes exactly as scalelab's byte tokenizer (what `byte_level_tokenizer` builds)."""
    if (made.vocab_size, made.eos_id, made.eos_token) != (ByteTokenizer.vocab_size, ByteTokenizer.eos_id, EOS_TOKEN):
        return False
    ours = json.loads(byte_level_tokenizer().to_str())
    theirs = json.loads(made.to_json())
    return all(ours[k] == theirs.get(k) for k in ("model", "pre_tokenizer", "normalizer", "post_processor",
                                                   "added_tokens"))


def save(tokenizer, directory: str | Path) -> Path:
    """A dataset's tokenizer.json (scalelab's byte tokenizer as its own JSON; a BPE with its config files)."""
    if tokenizer.kind == "byte":
        path = Path(directory) / tokenizers.TOKENIZER_FILE
        path.write_text(tokenizers.file_text(tokenizer), encoding="utf-8")
        return path
    return save_hf_tokenizer(tokenizer, directory)[0]


def load(directory: str | Path):
    """The tokenizer a directory's tokenizer.json holds (scalelab's own JSON, or a `tokenizers` file)."""
    spec = json.loads((Path(directory) / tokenizers.TOKENIZER_FILE).read_text(encoding="utf-8"))
    if "kind" in spec:  # scalelab's own JSON
        return tokenizers.from_dict(spec)
    return load_hf_tokenizer(directory)
