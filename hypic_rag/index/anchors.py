"""Word runs: how a stored segment is recognised inside a prompt whatever its formatting.

A text's words are its runs of letters and digits, case-folded, with their character spans (JSON
escapes such as \\n count as spaces, so a document serialised into JSON still reads as the same
words). A segment is found in a prompt where its body's words appear in a row, whatever sits
between them: newlines flattened, bullets, numbering, tags, quotes. Each segment's anchor is a
stable 63-bit hash of its body's first ANCHOR_WORDS words (all of them for a shorter body); the
index keeps anchors in SQLite, so a prompt is scanned with one lookup per window of words.
"""

from __future__ import annotations

import hashlib
import re

ANCHOR_WORDS = 8
_WORD = re.compile(r"\w+")
_ESCAPE = re.compile(r"\\[nrtbf\"'\\/]")


def words(text: str) -> list[tuple[str, int, int]]:
    """(case-folded word, start, end) of every word of `text`."""
    cleaned = _ESCAPE.sub("  ", text)  # the same length: spans stay those of `text`
    return [(m.group().casefold(), m.start(), m.end()) for m in _WORD.finditer(cleaned)]


def word_list(text: str) -> list[str]:
    """The case-folded words of `text`, without their spans."""
    return [w for w, _, _ in words(text)]


def run_hash(run: list[str]) -> int:
    """A stable signed 63-bit hash of a run of words (SQLite INTEGER)."""
    digest = hashlib.blake2b("\x1f".join(run).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def anchor_of(body: str) -> tuple[int, int] | None:
    """(hash, length) of a body's anchor run, or None for a body without words."""
    run = word_list(body)[:ANCHOR_WORDS]
    return (run_hash(run), len(run)) if run else None
