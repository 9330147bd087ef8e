"""Documents -> segments: paragraphs packed up to a token budget, each segment tokenized alone.

Documents come from hypic_rag/precompute/corpus.py (files, JSONL, in-memory texts and dicts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from hypic_rag.config import PromptTemplate
from hypic_rag.errors import RequestError
from hypic_rag.precompute.corpus import Document

MIN_SEGMENT_TOKENS = 16


def check_segment_budget(max_tokens, max_positions: int | None = None) -> int:
    """A segment token budget, checked before anything is written with it."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < MIN_SEGMENT_TOKENS:
        raise RequestError(f"max_segment_tokens must be an integer >= {MIN_SEGMENT_TOKENS}, got {max_tokens!r}")
    if max_positions is not None and max_tokens > max_positions:
        raise RequestError(f"max_segment_tokens {max_tokens} exceeds the model's {max_positions} positions")
    return max_tokens


@dataclass(frozen=True)
class Segment:
    segment_id: str
    doc_id: str
    title: str
    text: str  # the prompt text of the segment (template applied)
    token_ids: tuple[int, ...]
    metadata: dict = field(default_factory=dict)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _windows(text: str, chars: int) -> Iterator[str]:
    """`text` in pieces of at most `chars` characters, cut after a sentence end or a space where one
    falls in the window's second half (bounded memory for a paragraph of any size)."""
    start = 0
    while start < len(text):
        stop = min(start + chars, len(text))
        if stop < len(text):
            window = text[start:stop]
            cut = max(window.rfind(". "), window.rfind("! "), window.rfind("? "))
            cut = cut + 1 if cut > chars // 2 else window.rfind(" ")
            stop = start + cut + 1 if cut > chars // 2 else stop
        yield text[start:stop]
        start = stop


class Segmenter:
    def __init__(self, tokenizer, template: PromptTemplate, max_tokens: int = 512):
        self.max_tokens = check_segment_budget(max_tokens)
        self.tokenizer = tokenizer
        self.template = template

    def _encode(self, title: str, text: str) -> list[int]:
        return self.tokenizer.encode(self.template.segment.format(title=title, text=text), add_special_tokens=False)

    def _token_windows(self, title: str, text: str, step: int) -> Iterator[str]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        for start in range(0, len(ids), step):
            piece = self.tokenizer.decode(ids[start : start + step]).strip()
            if not piece:
                continue
            if len(self._encode(title, piece)) <= self.max_tokens or step == 1:
                yield piece
            else:  # decoding and re-encoding can merge differently: narrower windows
                yield from self._token_windows(title, piece, max(1, step // 2))

    def _pieces(self, title: str, paragraph: str, room: int) -> Iterator[str]:
        """A paragraph, or its sentences (or token windows of a sentence) when it is over budget."""
        if len(self._encode(title, paragraph)) <= self.max_tokens:
            yield paragraph
            return
        for sentence in _SENTENCE_END.split(paragraph):
            if len(self._encode(title, sentence)) <= self.max_tokens:
                yield sentence
            else:
                yield from self._token_windows(title, sentence, max(1, room - 8))

    def split(self, doc: Document, progress=None) -> list[Segment]:
        """The document's segments, each at most max_tokens tokens with the template and title.
        `progress(chars_done, chars_total)` is called as the text is consumed."""
        room = self.max_tokens - len(self._encode(doc.title, ""))
        if room < self.max_tokens // 2:
            raise RequestError(f"document {doc.doc_id!r}: its title and the segment template take "
                               f"{self.max_tokens - room} of the {self.max_tokens} tokens a segment may hold; "
                               "shorten the title or raise max_segment_tokens")
        chunks: list[str] = []
        current = ""
        done = 0
        for paragraph in re.split(r"\n\s*\n", doc.text):
            for window in _windows(paragraph.strip(), max(room, 1) * 8):
                if not window.strip():  # a blank paragraph adds nothing
                    continue
                for piece in self._pieces(doc.title, window.strip(), room):
                    joined = f"{current}\n\n{piece}" if current else piece
                    if current and len(self._encode(doc.title, joined)) > self.max_tokens:
                        chunks.append(current)
                        current = piece
                    else:
                        current = joined
                done += len(window)
                if progress:
                    progress(done, len(doc.text))
        if progress:  # paragraph breaks are not in any window: the last report is the whole text
            progress(len(doc.text), len(doc.text))
        if current:
            chunks.append(current)
        segments = []
        for i, chunk in enumerate(chunks):
            text = self.template.segment.format(title=doc.title, text=chunk)
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            if len(ids) > self.max_tokens:  # never stored: it could not be queried within budget
                raise RequestError(f"document {doc.doc_id!r} produced a {len(ids)}-token segment over the "
                                   f"{self.max_tokens}-token budget; please report this input")
            segments.append(Segment(f"{doc.doc_id}#{i}", doc.doc_id, doc.title, text, ids, doc.metadata))
        return segments
