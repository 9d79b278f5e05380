"""The built-in corpus: the Python standard library's own `.py` sources (tests excluded).

Every machine with Python has it (about 12 MB, 700+ files), it is real text with long-range
structure, and it needs no download. Files are assigned to train or validation by a hash of their
path relative to the stdlib root, so the split is the same on every machine with the same Python.
The tokenized corpus is cached under `$SCALELAB_CACHE` (default `~/.cache/scalelab`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

from scalelab.data.store import StoreBuilder, TokenStore
from scalelab.data.tokenizer import ByteTokenizer

EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[Path]:
    root = root or stdlib_root()
    files = [p for p in root.rglob("*.py") if not EXCLUDED_DIRS.intersection(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relative_path: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def cache_dir() -> Path:
    return Path(os.environ.get("SCALELAB_CACHE", Path.home() / ".cache" / "scalelab"))


def corpus_path(val_fraction: float) -> Path:
    version = ".".join(map(str, sys.version_info[:3]))
    return cache_dir() / f"stdlib-py{version}-byte-val{val_fraction:g}"


def open_stdlib(val_fraction: float = 0.05) -> TokenStore:
    """The stdlib corpus as a TokenStore, building the cache on first use (about a second)."""
    path = corpus_path(val_fraction)
    if not (path / "manifest.json").exists():
        root = stdlib_root()
        tokenizer = ByteTokenizer()
        digest = hashlib.sha256()
        extra = {"source": "stdlib", "root": str(root), "python": sys.version.split()[0], "val_fraction": val_fraction}
        with StoreBuilder(path, tokenizer, extra) as builder:
            for f in source_files(root):
                rel = f.relative_to(root).as_posix()
                text = f.read_bytes().decode("utf-8", errors="replace")
                digest.update(rel.encode() + b"\0" + text.encode())
                split = "val" if is_validation(rel, val_fraction) else "train"
                builder.add(split, tokenizer.encode(text), len(text.encode("utf-8")))
            builder.extra["sha256"] = digest.hexdigest()
    return TokenStore(path)
