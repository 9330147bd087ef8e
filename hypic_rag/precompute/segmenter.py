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

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    metadata: dict = field(default_factory=dict)


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
    text = path.read_text(encoding="utf-8", errors="replace").strip()
    if not text:
        return None
    title = _title_of(text, path.stem) if path.suffix == ".md" else path.stem
    return Document(doc_id, title, text, {"source": str(path)})


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n} is not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict) or "text" not in obj or "id" not in obj:
            raise ValueError(f'{path}:{n} needs an object with "id" and "text"')
        if str(obj["text"]).strip():
            docs.append(Document(str(obj["id"]), str(obj.get("title", obj["id"])), str(obj["text"]).strip(),
                                 dict(obj.get("metadata", {}), source=str(path))))
    return docs


def load_corpus(paths: Iterable[str | Path]) -> CorpusReport:
    """Read every supported file under the given files/directories. Raises ValueError when a path is
    missing, an explicitly named file is empty or unsupported, or nothing at all was found."""
    documents, skipped = [], []
    for raw in paths:
        root = Path(raw)
        if not root.exists():
            raise ValueError(f"corpus path does not exist: {root}")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            explicit = path == root
            if path.suffix not in SUFFIXES:
                if explicit:
                    raise ValueError(f"{path}: unsupported file type; use .txt, .md or .jsonl")
                skipped.append(f"{path}: unsupported file type")
                continue
            doc_id = path.name if explicit else str(path.relative_to(root))
            found = _read_jsonl(path) if path.suffix == ".jsonl" else [d for d in [_read_text_file(path, doc_id)] if d]
            if not found:
                if explicit:
                    raise ValueError(f"corpus file is empty: {path}")
                skipped.append(f"{path}: empty")
            documents += found
    if not documents:
        raise ValueError("the corpus holds no documents (need non-empty .txt, .md or .jsonl files)")
    return CorpusReport(documents, skipped)


def as_documents(items: Iterable[str | dict | Document]) -> list[Document]:
    """In-memory inputs: plain strings get ids doc-0, doc-1, ...; dicts need "text" (and may have id/title)."""
    docs = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, str):
            if not item.strip():
                raise ValueError(f"document {i} is empty")
            docs.append(Document(f"doc-{i}", f"doc-{i}", item.strip()))
        elif isinstance(item, dict) and str(item.get("text", "")).strip():
            doc_id = str(item.get("id", f"doc-{i}"))
            docs.append(Document(doc_id, str(item.get("title", doc_id)), str(item["text"]).strip(),
                                 dict(item.get("metadata", {}))))
        else:
            raise ValueError(f'document {i} must be a non-empty string or a dict with non-empty "text"')
    return docs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Segmenter:
    def __init__(self, tokenizer, template: PromptTemplate, max_tokens: int = 512):
        if max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {max_tokens}")
        self.tokenizer = tokenizer
        self.template = template
        self.max_tokens = max_tokens

    def _encode(self, title: str, text: str) -> list[int]:
        return self.tokenizer.encode(self.template.segment.format(title=title, text=text), add_special_tokens=False)

    def _pieces(self, title: str, paragraph: str) -> Iterator[str]:
        """A paragraph, or its sentences (or token windows of a sentence) when it is over budget."""
        if len(self._encode(title, paragraph)) <= self.max_tokens:
            yield paragraph
            return
        for sentence in _SENTENCE_END.split(paragraph):
            if len(self._encode(title, sentence)) <= self.max_tokens:
                yield sentence
                continue
            ids = self.tokenizer.encode(sentence, add_special_tokens=False)
            step = max(1, self.max_tokens - len(self._encode(title, "")) - 8)
            for start in range(0, len(ids), step):
                yield self.tokenizer.decode(ids[start : start + step])

    def split(self, doc: Document) -> list[Segment]:
        chunks: list[str] = []
        current = ""
        for paragraph in (p.strip() for p in re.split(r"\n\s*\n", doc.text)):
            if not paragraph:
                continue
            for piece in self._pieces(doc.title, paragraph):
                joined = f"{current}\n\n{piece}" if current else piece
                if current and len(self._encode(doc.title, joined)) > self.max_tokens:
                    chunks.append(current)
                    current = piece
                else:
                    current = joined
        if current:
            chunks.append(current)
        segments = []
        for i, chunk in enumerate(chunks):
            text = self.template.segment.format(title=doc.title, text=chunk)
            ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
            segments.append(Segment(f"{doc.doc_id}#{i}", doc.doc_id, doc.title, text, ids, doc.metadata))
        return segments
