"""Reading raw documents for `scalelab data prepare`: text files, JSONL and Parquet, streamed.

The format is chosen by extension: `.jsonl`/`.ndjson` (one JSON object per line, the text in a
field), `.parquet` (the text in a column, read in row batches), anything else named explicitly is
a text file holding one document. A `.gz` suffix on text and JSONL files is decompressed on the
fly. A directory contributes, recursively and in sorted order, its files with a known extension.

Readers yield one raw text per record and never hold more than one record (or one Parquet row
batch) in memory. A record that cannot be read (a line that is not JSON, a missing or non-string
field) goes to the `on_bad` callback with a message naming the file and line; the callback
either raises or counts it. Problems with a whole file (a missing Parquet column) always raise.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # text | jsonl | parquet
    compressed: bool

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _format_of(path: Path) -> tuple[str, bool] | None:
    """(format, gzip-compressed) from the file name, or None for an unknown extension."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] == ".gz"
    last = suffixes[-2] if compressed and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compressed else "")
    if last in JSONL_SUFFIXES:
        return "jsonl", compressed
    if last in PARQUET_SUFFIXES:
        return ("parquet", False) if not compressed else None
    if last in TEXT_SUFFIXES:
        return "text", compressed
    return None


def find_sources(inputs: list[str]) -> list[Source]:
    """The files behind the command-line inputs (files, directories, glob patterns), each once."""
    if not inputs:
        raise ValueError("no input given: name text files, directories, .jsonl or .parquet files")
    found: dict[Path, Source] = {}
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted((p for p in path.rglob("*") if p.is_file() and not _hidden(p, path)
                            and _format_of(p) is not None), key=lambda p: p.relative_to(path).as_posix())
            if not files:
                raise ValueError(f"{path}: the directory holds no text ({', '.join(TEXT_SUFFIXES)}), JSONL "
                                 f"({', '.join(JSONL_SUFFIXES)}) or Parquet files")
        elif path.is_file():
            files = [path]
        elif glob.has_magic(given):
            files = [Path(p) for p in sorted(glob.glob(given, recursive=True)) if Path(p).is_file()]
            if not files:
                raise FileNotFoundError(f"input not found: no file matches {given!r}")
        else:
            raise FileNotFoundError(f"input not found: {given}")
        for f in files:
            fmt, compressed = _format_of(f) or ("text", f.suffix.lower() == ".gz")  # named explicitly: text
            found.setdefault(f.resolve(), Source(f, fmt, compressed))
    return list(found.values())


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _open_binary(source: Source):
    return gzip.open(source.path, "rb") if source.compressed else open(source.path, "rb")


def read_records(source: Source, text_field: str, on_bad: Callable[[str], None],
                 advance: Callable[[int], None] = lambda n: None) -> Iterator[str]:
    """The raw texts of one file, one per record; `advance(n)` reports n more file bytes read."""
    readers = {"text": _read_text, "jsonl": _read_jsonl, "parquet": _read_parquet}
    yield from readers[source.format](source, text_field, on_bad, advance)


def _read_text(source: Source, text_field, on_bad, advance) -> Iterator[str]:
    with _open_binary(source) as f:
        # newline="" keeps \r so that cleaning, not the reader, decides what a line ending is
        text = io.TextIOWrapper(f, encoding="utf-8", errors="replace", newline="").read()
    advance(source.size)
    yield text


def _read_jsonl(source: Source, text_field, on_bad, advance) -> Iterator[str]:
    name = source.path
    with _open_binary(source) as f:
        for line_number, raw in enumerate(f, start=1):
            if not source.compressed:
                advance(len(raw))
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                on_bad(f"{name}:{line_number}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            except UnicodeDecodeError:
                on_bad(f"{name}:{line_number}: not valid UTF-8")
                continue
            if not isinstance(record, dict):
                on_bad(f"{name}:{line_number}: expected a JSON object with a {text_field!r} field, "
                       f"got a JSON {type(record).__name__}")
                continue
            if text_field not in record:
                fields = ", ".join(map(str, list(record)[:10])) or "none"
                on_bad(f"{name}:{line_number}: no {text_field!r} field (fields: {fields}); "
                       f"choose the text field with --text-field")
                continue
            value = record[text_field]
            if value is None:
                yield ""
            elif isinstance(value, str):
                yield value
            else:
                on_bad(f"{name}:{line_number}: field {text_field!r} holds a JSON {type(value).__name__}, "
                       f"not a string")
    if source.compressed:
        advance(source.size)


def _read_parquet(source: Source, text_field, on_bad, advance) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{source.path}: not a readable Parquet file ({exc})") from exc
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise ValueError(f"{source.path}: no column {text_field!r}; its columns: {', '.join(schema.names)} "
                         f"(choose the text column with --text-field)")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise ValueError(f"{source.path}: column {text_field!r} holds {kind}, not text")
    rows = max(1, parquet.metadata.num_rows)
    size = source.size
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            yield value or ""  # a null text is an empty document
        advance(size * batch.num_rows // rows)
