"""Finding cached segments inside plain prompt text (what a stuffing RAG chain sends).

Two ways, tried in order:
 1. separator: the prompt is split on `<<PIC_SEP>>` (HYPIC's convention); every piece but the last
    is a segment, looked up by exact text, and the last piece is the question;
 2. exact text: at each line start, stored segments whose first line matches are candidates, and a
    candidate whose whole text appears there is taken (longest first).
Text that matches nothing becomes an uncached segment (precomputed on the fly, then cached like
any other), except the text after the last match, which is the question and is never cached.
Whitespace-only gaps between matched segments are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypic_rag.errors import RequestError
from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord

SEPARATOR = "<<PIC_SEP>>"


@dataclass(frozen=True)
class PromptPiece:
    text: str
    record: SegmentRecord | None  # None: text not in the store


@dataclass(frozen=True)
class PromptPlan:
    pieces: list[PromptPiece]
    question: str

    @property
    def matched_ids(self) -> list[str]:
        return [p.record.segment_id for p in self.pieces if p.record is not None]


def _lookup(index: SegmentIndex, text: str) -> SegmentRecord | None:
    return index.find_by_text(text) or index.find_by_text(text.strip()) or index.find_by_text(text.strip() + "\n")


def _plan_by_separator(prompt: str, index: SegmentIndex) -> PromptPlan:
    *body, question = prompt.split(SEPARATOR)
    pieces = [PromptPiece(t, _lookup(index, t)) for t in body if t.strip()]
    return PromptPlan(pieces, question)


def _plan_by_text(prompt: str, index: SegmentIndex) -> PromptPlan:
    pieces: list[PromptPiece] = []
    gap_start = 0
    pos = 0
    while pos < len(prompt):
        line_end = prompt.find("\n", pos)
        line = prompt[pos : line_end if line_end >= 0 else len(prompt)]
        match = None
        if line.strip():
            for record in sorted(index.starting_with_line(line), key=lambda r: -len(r.text)):
                start = pos + (len(line) - len(line.lstrip()))
                body = next((b for b in (record.text, record.text.rstrip("\n")) if prompt.startswith(b, start)), None)
                if body is not None:
                    match = (record, start, start + len(body))
                    break
        if match is None:
            pos = len(prompt) if line_end < 0 else line_end + 1
            continue
        record, start, end = match
        gap = prompt[gap_start:start]
        if gap.strip():
            pieces.append(PromptPiece(gap, None))
        pieces.append(PromptPiece(record.text, record))
        pos = gap_start = end
    return PromptPlan(pieces, prompt[gap_start:])


def plan_prompt(prompt: str, index: SegmentIndex) -> PromptPlan:
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt must be a non-empty string")
    plan = _plan_by_separator(prompt, index) if SEPARATOR in prompt else _plan_by_text(prompt, index)
    if not plan.question.strip():
        if not plan.pieces:
            raise RequestError("prompt has no question text")
        last = plan.pieces[-1]  # a prompt ending in a segment: its text is asked about, uncached
        plan = PromptPlan(plan.pieces[:-1], last.text + plan.question)
    return plan
