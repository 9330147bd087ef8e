"""Finding stored segments inside a finished prompt, whatever its formatting.

What a stuffing chain sends is the retrieved documents formatted its own way: numbered or bulleted,
wrapped in tags, newlines flattened, serialised into JSON, after LlamaIndex's metadata block, or
the raw text from the user's own vector store. A stored segment is recognised where the words of
its document text appear in a row (hypic_rag/index/anchors.py): each window of words of the prompt
is looked up by its hash among the segments' anchors, and a candidate is taken when all of its
words follow; the segment's template header (e.g. "Document: <title>") is taken with it when it
immediately precedes. Overlapping candidates: the earliest, then the longest.

The plan is the matched segments (served from the cache, as stored) and the text between them
(the prompt's own glue: headers, instructions, other documents), which is computed for the
request and never stored; the text after the last match is the question. A prompt split by
HYPIC's `<<PIC_SEP>>` separator is planned by that split, each piece matched as above.

`question_of` finds the user's question in a stock prompt, for the "store" prompt format: the
matched documents and that question in the store's own template (what its model was trained on),
the prompt's other text dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from hypic_rag.errors import RequestError
from hypic_rag.index.anchors import run_hash, word_list, words
from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord

SEPARATOR = "<<PIC_SEP>>"


@dataclass(frozen=True)
class PromptPiece:
    text: str
    record: SegmentRecord | None  # None: the prompt's own text (computed for this request, not stored)


@dataclass(frozen=True)
class PromptPlan:
    pieces: list[PromptPiece]
    question: str

    @property
    def matched_ids(self) -> list[str]:
        return [p.record.segment_id for p in self.pieces if p.record is not None]


@dataclass(frozen=True)
class _Shape:
    """What a stored segment looks like in a prompt's words: its document text's words, the words
    of its template header (taken along when they precede), and the characters its text has after
    its last word (its final punctuation and newline)."""

    record: SegmentRecord
    body: list[str]
    head: list[str]
    after: str

    @classmethod
    def of(cls, record: SegmentRecord, index: SegmentIndex, parts) -> "_Shape":
        last = words(record.text)
        return cls(record, word_list(index.body_of(record)), word_list(parts(record)[0]) if parts else [],
                   record.text[last[-1][2]:] if last else "")

    def end(self, prompt: str, stop: int) -> int:
        """The match's end moved over `after` where the prompt has it too, or at least over its
        punctuation."""
        for tail in (self.after, self.after.strip()):
            if tail and prompt.startswith(tail, stop):
                return stop + len(tail)
        return stop


def _matches(prompt: str, index: SegmentIndex, parts: Callable[[SegmentRecord], tuple[str, str]] | None):
    """(start, end, record) of every stored segment found in `prompt`, not overlapping, in order."""
    found = words(prompt)
    if not found:
        return []
    plain = [w for w, _, _ in found]
    windows: dict[int, list[int]] = {}
    for length in index.anchor_lengths():
        for at in range(len(plain) - length + 1):
            windows.setdefault(run_hash(plain[at : at + length]), []).append(at)
    candidates = []
    shapes: dict[str, _Shape | None] = {}
    for h, sids in index.anchored(list(windows)).items():
        for sid in sids:
            if sid not in shapes:
                record = index.get(sid)
                shapes[sid] = None if record is None else _Shape.of(record, index, parts)
            shape = shapes[sid]
            if shape is None:
                continue
            body, head = shape.body, shape.head
            for at in windows[h]:
                if plain[at : at + len(body)] == body:
                    first = at - len(head) if head and at >= len(head) and plain[at - len(head) : at] == head else at
                    stop = found[at + len(body) - 1][2]
                    candidates.append((found[first][1], shape.end(prompt, stop), shape.record))
    candidates.sort(key=lambda c: (c[0], -(c[1] - c[0])))
    taken, end = [], -1
    for start, stop, record in candidates:
        if start >= end:
            taken.append((start, stop, record))
            end = stop
    return taken


def _plan(prompt: str, index: SegmentIndex, parts) -> PromptPlan:
    pieces: list[PromptPiece] = []
    cursor = 0
    for start, stop, record in _matches(prompt, index, parts):
        gap = prompt[cursor:start]
        if gap.strip():
            pieces.append(PromptPiece(gap, None))
        pieces.append(PromptPiece(record.text, record))
        cursor = stop
    return PromptPlan(pieces, prompt[cursor:])


def plan_prompt(prompt: str, index: SegmentIndex,
                parts: Callable[[SegmentRecord], tuple[str, str]] | None = None) -> PromptPlan:
    """The plan of `prompt` (module docstring). `parts(record)`: the template text around a
    segment's document text (PromptTemplate.segment_parts for its title)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt must be a non-empty string")
    if SEPARATOR in prompt:
        *body, question = prompt.split(SEPARATOR)
        pieces = []
        for text in body:
            if text.strip():
                sub = _plan(text, index, parts)
                pieces += sub.pieces + ([PromptPiece(sub.question, None)] if sub.question.strip() else [])
        plan = PromptPlan(pieces, question)
    else:
        plan = _plan(prompt, index, parts)
    if not plan.question.strip():
        if not plan.pieces:
            raise RequestError("prompt has no question text")
        last = plan.pieces[-1]  # a prompt ending in a segment: its text is asked about, uncached
        plan = PromptPlan(plan.pieces[:-1], last.text + plan.question)
    return plan


_MARKED = re.compile(r"^[ \t]*(?:query|question|q)[ \t]*[:：][ \t]*(.*)$", re.I | re.M)
_TAIL = re.compile(r"\s+(?:context|answer|documents?)\s*:.*$", re.I | re.S)
_ANSWER_LINE = re.compile(r"^\s*(?:answer|a|response)\s*:\s*$", re.I)


def question_of(plan: PromptPlan) -> str:
    """The user's question inside a prompt's own text (the text around its documents): the last
    line marked "Query:" / "Question:" (LlamaIndex's and LangChain's stock prompts), cut before a
    following "Context:" or "Answer:"; else the last non-empty line of the text after the last
    document, without an "Answer:" line."""
    text = "\n".join([p.text for p in plan.pieces if p.record is None] + [plan.question])
    marked = [m for m in _MARKED.finditer(text)]
    for m in reversed(marked):
        found = m.group(1).strip()
        if not found:  # "Question:" alone on its line: the question is the next non-empty line
            found = next((line.strip() for line in text[m.end():].splitlines() if line.strip()), "")
        found = _TAIL.sub("", found).strip()
        if found:
            return found
    lines = [line.strip() for line in plan.question.splitlines() if line.strip() and not _ANSWER_LINE.match(line)]
    return lines[-1] if lines else plan.question.strip()
