"""Document cleaning and identity: what `scalelab data prepare` does to each text before tokenizing.

Cleaning is deliberately conservative, so that the text a model sees is the text that was written:
  - line endings become `\\n` (`\\r\\n` and a lone `\\r` alike),
  - Unicode NFC normalisation (one code-point sequence per visible character),
  - control characters (Unicode category Cc) are removed, except `\\n` and `\\t`; so are lone
    surrogates, which cannot be encoded as UTF-8,
  - leading and trailing whitespace is stripped.

A document's identity is a hash of its cleaned UTF-8 text: equal hashes are exact duplicates, and
the same hash (salted with the seed) decides its split, so the split does not depend on file order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Cc is U+0000..U+001F and U+007F..U+009F; keep \t (U+0009) and \n (U+000A). Surrogates: U+D800..U+DFFF.
_UNWANTED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_ENDINGS = re.compile("\r\n?")


def clean_text(text: str) -> str:
    text = _LINE_ENDINGS.sub("\n", text)
    text = unicodedata.normalize("NFC", text)
    return _UNWANTED.sub("", text).strip()


def document_digest(cleaned: str) -> bytes:
    """16-byte identity of a cleaned document (exact-duplicate detection)."""
    return hashlib.blake2b(cleaned.encode("utf-8"), digest_size=16).digest()


def split_score(digest: bytes, seed: int) -> float:
    """A uniform number in [0, 1) fixed by the document and the seed; below val_fraction is validation."""
    salted = hashlib.blake2b(digest, digest_size=8, key=seed.to_bytes(8, "big", signed=True)).digest()
    return int.from_bytes(salted, "big") / 2**64
