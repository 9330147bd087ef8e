"""Where documents come from: files and folders, JSONL, in-memory texts and dicts.

Ids (what a later ingest updates and `delete` removes):
  - a .txt or .md file: its full resolved path, so two files of one name in different folders stay
    two documents;
  - a JSONL line: its "id";
  - a text, or a dict without "id": "doc-" and the first 16 hex digits of the SHA-256 of the text,
    so two different texts never share an id and ingesting the same text again changes nothing
    (such a document has no title unless the dict gives one).
Markdown front matter (a leading block between two "---" lines, YAML) becomes metadata; its
"title", or else the first line of the body, is the title.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from hypic_rag.errors import RequestError

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl"}
MAX_ID_CHARS = 1024
MAX_TITLE_CHARS = 1024
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


def content_id(text: str) -> str:
    """The default id of a text: doc- and 16 hex digits of its SHA-256."""
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
class CorpusReport:
    documents: list[Document]
    skipped: list[str]  # "path: reason"


def front_matter(text: str, where: str) -> tuple[dict, str]:
    """(metadata, body) of a Markdown text: its leading YAML block between "---" lines, if any, with
    values made JSON-safe (dates and other scalars as strings)."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    import yaml

    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise RequestError(f"{where}: its front matter is not valid YAML ({str(exc).splitlines()[0]}); "
                           "fix it or remove the leading --- block") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RequestError(f"{where}: its front matter must be key: value pairs, got {type(data).__name__}")
    return json.loads(json.dumps({str(k): v for k, v in data.items()}, default=str)), text[match.end():].strip()


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
    metadata: dict = {}
    if path.suffix == ".md":
        metadata, text = front_matter(text, str(path))
    if not text:
        return None
    title = path.stem
    if path.suffix == ".md":
        title = str(metadata["title"]) if metadata.get("title") else _title_of(text, path.stem)
    return Document(doc_id, title[:MAX_TITLE_CHARS], text, {**metadata, "source": str(path)})


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
            doc_id = str(path.resolve())
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
    """In-memory inputs: strings, and dicts with "text" (optional "id", "title", "metadata"); a text
    without an id gets its content id (module docstring)."""
    docs = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, str):
            if not item.strip():
                raise RequestError(f"document {i} is empty")
            docs.append(Document(content_id(item.strip()), "", item.strip()))  # no title: none is known
        elif isinstance(item, dict) and isinstance(item.get("text"), str) and item["text"].strip():
            named = item.get("id") is not None
            doc_id = str(item["id"]) if named else content_id(item["text"].strip())
            docs.append(Document(doc_id, str(item.get("title", doc_id if named else "")), item["text"].strip(),
                                 dict(_metadata(item, f"document {i}"))))
        else:
            raise RequestError(f'document {i} must be a non-empty string or a dict with non-empty "text"')
    return docs


def is_existing_path(item) -> bool:
    if not isinstance(item, (str, Path)) or (isinstance(item, str) and ("\n" in item or len(item) > 4096)):
        return False
    try:
        return Path(item).exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL: text, not a path
        return False


def documents_of(items: list) -> tuple[list[Document], list[str]]:
    """Documents (and skipped files) from a list of paths, texts, dicts and Documents."""
    kinds = ["path" if isinstance(i, Path) or is_existing_path(i) else "text" if isinstance(i, str) else "doc"
             for i in items]
    if "path" in kinds and "text" in kinds:
        raise RequestError(
            f"the items mix file paths (item {kinds.index('path')}) and texts (item {kinds.index('text')}); a text "
            "cannot be told from a mistyped path: ingest paths and texts in separate calls, or pass texts as "
            "{'text': ...} dicts")
    paths = [i for i, kind in zip(items, kinds) if kind == "path"]
    corpus = load_corpus(paths) if paths else None
    docs = (corpus.documents if corpus else []) + as_documents([i for i, kind in zip(items, kinds) if kind != "path"])
    seen: dict[str, Document] = {}
    for doc in docs:
        if doc.doc_id in seen and seen[doc.doc_id] != doc:
            raise RequestError(f"two different documents have the id {doc.doc_id!r}; give each its own id")
        seen[doc.doc_id] = doc
    return list(seen.values()), (corpus.skipped if corpus else [])
