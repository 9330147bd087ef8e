"""Documents -> segments: paragraphs packed up to a token budget, each segment tokenized alone.

Inputs: .txt and .md files (the document id is the path relative to the corpus root), .jsonl files
with one {"id", "text"} object per line (optional "title", "metadata"), or in-memory strings/dicts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from hypic_rag.config import PromptTemplate
from hypic_rag.errors import RequestError

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}
MAX_ID_CHARS = 1024
MAX_TITLE_CHARS = 1024
MIN_SEGMENT_TOKENS = 16


def check_segment_budget(max_tokens, max_positions: int | None = None) -> int:
    """A segment token budget, checked before anything is written with it."""
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < MIN_SEGMENT_TOKENS:
        raise RequestError(f"max_segment_tokens must be an integer >= {MIN_SEGMENT_TOKENS}, got {max_tokens!r}")
    if max_positions is not None and max_tokens > max_positions:
        raise RequestError(f"max_segment_tokens {max_tokens} exceeds the model's {max_positions} positions")
    return max_tokens


@dataclass(frozen=True)
class Document:
    """One document to ingest; ids and titles are bounded, metadata is a JSON object."""

    doc_id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, limit in (("doc_id", MAX_ID_CHARS), ("title", MAX_TITLE_CHARS)):
            value = getattr(self, name)
            if not isinstance(value, str) or (name == "doc_id" and not value.strip()) or len(value) > limit:
                shown = value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value
                raise RequestError(f"document {name} must be a string of at most {limit} characters"
                                   f"{' (not empty)' if name == 'doc_id' else ''}, "
                                   f"got {shown!r}" + (f" ({len(value)} characters)" if isinstance(value, str) else ""))
        if not isinstance(self.text, str) or not self.text.strip():
            raise RequestError(f"document {self.doc_id!r} has no text")
        if not isinstance(self.metadata, dict) or not all(isinstance(k, str) for k in self.metadata):
            raise RequestError(f"document {self.doc_id!r}: metadata must be an object with string keys, "
                               f"got {type(self.metadata).__name__}")
        try:
            json.dumps(self.metadata)
        except (TypeError, ValueError) as exc:
            raise RequestError(f"document {self.doc_id!r}: metadata must be JSON-serialisable ({exc})") from None


@dataclass(frozen=True)
class Segment:
    segment_id: str
    doc_id: str
    title: str
    text: str  # the prompt text of the segment (template applied)
    token_ids: tuple[int, ...]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CorpusReport:
    documents: list[Document]
    skipped: list[str]  # "path: reason"


def _title_of(text: str, fallback: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip().lstrip("#").strip() or fallback
    return fallback


def _read_text_file(path: Path, doc_id: str) -> Document | None:
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise RequestError(f"{path}: a binary file, not text (it holds NUL bytes); remove it or rename it")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise RequestError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x}); "
                           "convert it to UTF-8") from None
    if not text:
        return None
    title = _title_of(text, path.stem) if path.suffix == ".md" else path.stem
    return Document(doc_id, title[:MAX_TITLE_CHARS], text, {"source": str(path)})


def _metadata(obj: dict, where: str) -> dict:
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict):
        raise RequestError(f'{where}: "metadata" must be an object, got {type(metadata).__name__}')
    return metadata


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise RequestError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"{path}:{n} is not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or "text" not in obj or "id" not in obj:
            raise RequestError(f'{path}:{n} needs an object with "id" and "text"')
        if not isinstance(obj["text"], str) or not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise RequestError(f'{path}:{n}: "id" must be a string or integer and "text" a string')
        if obj["text"].strip():
            try:
                docs.append(Document(str(obj["id"]), str(obj.get("title", obj["id"])), obj["text"].strip(),
                                     dict(_metadata(obj, f"{path}:{n}"), source=str(path))))
            except RequestError as exc:
                raise RequestError(f"{path}:{n}: {exc}") from None
    return docs


def load_corpus(paths: Iterable[str | Path]) -> CorpusReport:
    """Read every supported file under the given files/directories. Raises ValueError when a path is
    missing, an explicitly named file is empty or unsupported, or nothing at all was found."""
    documents, skipped = [], []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise RequestError(f"corpus path does not exist: {root}")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            explicit = path == root
            if path.suffix not in SUFFIXES:
                if explicit:
                    raise RequestError(f"{path}: unsupported file type; use .txt, .md or .jsonl")
                skipped.append(f"{path}: unsupported file type")
                continue
            doc_id = path.name if explicit else str(path.relative_to(root))
            try:
                found = _read_jsonl(path) if path.suffix == ".jsonl" else [d for d in [_read_text_file(path, doc_id)] if d]
            except RequestError as exc:  # a bad file named on the command line stops; one found in a folder is skipped
                if explicit:
                    raise
                skipped.append(str(exc))
                continue
            if not found:
                if explicit:
                    raise RequestError(f"corpus file is empty: {path}")
                skipped.append(f"{path}: empty")
            documents += found
    if not documents:
        raise RequestError("the corpus holds no documents (need non-empty .txt, .md or .jsonl files)")
    return CorpusReport(documents, skipped)


def as_documents(items: Iterable[str | dict | Document]) -> list[Document]:
    """In-memory inputs: plain strings get ids doc-0, doc-1, ...; dicts need "text" (and may have id/title)."""
    docs = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, str):
            if not item.strip():
                raise RequestError(f"document {i} is empty")
            docs.append(Document(f"doc-{i}", f"doc-{i}", item.strip()))
        elif isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            doc_id = str(item.get("id", f"doc-{i}"))
            docs.append(Document(doc_id, str(item.get("title", doc_id)), item["text"].strip(),
                                 dict(_metadata(item, f"document {i}"))))
        else:
            raise RequestError(f'document {i} must be a non-empty string or a dict with non-empty "text"')
    return docs


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
