"""Segment records in SQLite beside a FAISS inner-product index over their embeddings.

SQLite is the record of truth (segment id, store key, document, text, token ids, metadata and the
embedding); the FAISS index is rebuilt from it whenever the saved index file is unreadable or
disagrees with it (dimension, count, or the set of row ids), so a killed run, a damaged file or
another writer never leaves an index pointing at rows that were not committed or missing rows
that were. Writers in several processes coordinate through SQLite's own lock: inserts are
idempotent (INSERT OR IGNORE) inside one immediate transaction per batch.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hypic_rag.errors import RequestError, StoreError
from hypic_rag.index.anchor_table import AnchorTable


@dataclass(frozen=True)
class SegmentRecord:
    """One stored segment: its id, store key, document, title, text, token ids and metadata."""

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 40 else self.text[:39] + "…"
        return f"SegmentRecord({self.segment_id!r}, title={self.title!r}, tokens={len(self.token_ids)}, text={text!r})"

    segment_id: str
    key: str
    doc_id: str
    title: str
    text: str
    token_ids: tuple[int, ...]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievedSegment:
    """A segment a retrieval returned, with its score and rank."""

    def __repr__(self) -> str:
        return f"RetrievedSegment({self.record.segment_id!r}, score={self.score:.3f}, rank={self.rank})"

    record: SegmentRecord
    score: float
    rank: int


def head_of(text: str) -> str:
    """The first non-empty line of a segment's text, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


_REPAIR = ("move the store's index/ folder away and rerun `hypic-rag precompute CORPUS --store DIR`: "
           "stored entries are reused and only the index is rebuilt")


class _SqliteGuard:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StoreError(f"{self.path} stayed locked by another process for 120 s: {exc}") from None
            if isinstance(exc, sqlite3.OperationalError) and ("disk" in str(exc) or "full" in str(exc)):
                raise StoreError(f"could not write {self.path}: {exc}; free space there and rerun: "
                                 "nothing committed is lost") from None
            raise StoreError(f"{self.path} is damaged or not a SQLite database ({exc}); {_REPAIR}") from None
        return False


def _faiss():
    import faiss

    return faiss


class SegmentIndex(AnchorTable):
    def __init__(self, directory: str | Path, dim: int, body_of: Callable[[SegmentRecord], str] | None = None):
        """`body_of(record)`: the document text a record's prompt text was made from (its anchor is
        taken there, hypic_rag/index/anchors.py); default: the whole text."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.body_of = body_of or (lambda record: record.text)
        self._lock = threading.RLock()  # callers may come from worker threads (LangChain, LlamaIndex)
        self._path = self.directory / "segments.sqlite"
        with self._guard():
            self._db = sqlite3.connect(str(self._path), check_same_thread=False, timeout=120, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS segments (row INTEGER PRIMARY KEY, segment_id TEXT UNIQUE, key TEXT,"
                " doc_id TEXT, title TEXT, text TEXT, token_ids TEXT, metadata TEXT, embedding BLOB, head TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_head ON segments(head)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_text ON segments(text)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_doc ON segments(doc_id)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_key ON segments(key)")
            self._db.execute("CREATE TABLE IF NOT EXISTS anchors (hash INTEGER, length INTEGER, segment_id TEXT)")
            self._db.execute("CREATE INDEX IF NOT EXISTS anchors_hash ON anchors(hash)")
            self._index = self._load_or_rebuild()
        self._gpu = None
        self._backfill_anchors()

    def _guard(self):
        """Turn SQLite's damage reports into one StoreError naming the file and the repair."""
        return _SqliteGuard(self._path)

    # ------------------------------------------------------------------ persistence
    @property
    def _index_path(self) -> Path:
        return self.directory / "segments.faiss"

    def _empty(self):
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _row_ids(self) -> np.ndarray:
        return np.fromiter((r for (r,) in self._db.execute("SELECT row FROM segments ORDER BY row")), dtype=np.int64)

    def _load_or_rebuild(self):
        """The saved FAISS index when it agrees with SQLite row for row, else one rebuilt from SQLite."""
        faiss = _faiss()
        rows = self._row_ids()
        # read the file only when its size is exactly what these rows need: FAISS trusts the sizes a
        # file declares, so a crafted or damaged file must not reach it (SQLite can always rebuild)
        expected = len(faiss.serialize_index(self._empty())) + len(rows) * (4 * self.dim + 8)
        if self._index_path.is_file() and self._index_path.stat().st_size == expected:
            try:
                index = faiss.read_index(str(self._index_path))
                ids = np.sort(faiss.vector_to_array(index.id_map)) if hasattr(index, "id_map") else None
            except RuntimeError:  # unreadable or truncated: SQLite holds every embedding
                ids = None
            if ids is not None and index.d == self.dim and np.array_equal(ids, rows):
                self.rebuilt_on_open = False
                return index
        self.rebuilt_on_open = bool(len(rows))
        return self._rebuild()

    def _rebuild(self):
        index = self._empty()
        rows, vecs = [], []
        for row, blob in self._db.execute("SELECT row, embedding FROM segments ORDER BY row"):
            vec = np.frombuffer(blob, dtype=np.float32)
            if vec.shape != (self.dim,):
                raise StoreError(f"{self._path}: segment row {row} holds a {vec.size}-value embedding, the index "
                                 f"expects {self.dim}; {_REPAIR}")
            rows.append(row)
            vecs.append(vec)
        if rows:
            index.add_with_ids(np.stack(vecs), np.asarray(rows, dtype=np.int64))
        return index

    def _save_index(self) -> None:
        tmp = self._index_path.with_suffix(".faiss.tmp")
        _faiss().write_index(self._index, str(tmp))
        os.replace(tmp, self._index_path)

    # ------------------------------------------------------------------ writes
    def __contains__(self, segment_id: str) -> bool:
        with self._lock, self._guard():
            return self._db.execute("SELECT 1 FROM segments WHERE segment_id = ?", (segment_id,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock, self._guard():
            return int(self._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])

    def add(self, records: list[SegmentRecord], vectors: np.ndarray) -> None:
        """Add records with their embeddings in one transaction (existing segment ids are skipped)."""
        if len(records) != len(vectors):
            raise RequestError(f"{len(records)} records but {len(vectors)} embeddings")
        with self._lock:
            self._add(records, vectors)

    def _add(self, records: list[SegmentRecord], vectors: np.ndarray) -> None:
        new_rows, new_vecs = [], []
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no check-then-insert race
            try:
                for record, vec in zip(records, vectors):
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO segments (segment_id, key, doc_id, title, text, token_ids, metadata,"
                        " embedding, head) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (record.segment_id, record.key, record.doc_id, record.title, record.text,
                         json.dumps(list(record.token_ids)), json.dumps(record.metadata),
                         np.asarray(vec, dtype=np.float32).tobytes(), head_of(record.text)),
                    )
                    if cur.rowcount == 1:
                        new_rows.append(cur.lastrowid)
                        new_vecs.append(vec)
                        self._insert_anchor(record)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if new_rows:
                self._index.add_with_ids(np.asarray(new_vecs, dtype=np.float32), np.asarray(new_rows, dtype=np.int64))
            if self._index.ntotal != len(self):  # another process added rows meanwhile
                self._index = self._rebuild()
            if new_rows:
                self._gpu = None
                self._save_index()

    def delete_documents(self, doc_ids: list[str]) -> list[tuple[str, str]]:
        """Remove every segment of these documents (one transaction, then the FAISS rows); returns the
        (segment_id, key) pairs removed."""
        with self._lock, self._guard():
            marks = ",".join("?" * len(doc_ids))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute(f"SELECT row, segment_id, key FROM segments WHERE doc_id IN ({marks})",
                                        list(doc_ids)).fetchall()
                self._db.execute(f"DELETE FROM segments WHERE doc_id IN ({marks})", list(doc_ids))
                for _, sid, _ in gone:
                    self._db.execute("DELETE FROM anchors WHERE segment_id = ?", (sid,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if gone:
                self._index.remove_ids(np.asarray([r for r, _, _ in gone], dtype=np.int64))
                if self._index.ntotal != len(self):  # another process changed rows meanwhile
                    self._index = self._rebuild()
                self._gpu = None
                self._save_index()
        return [(sid, key) for _, sid, key in gone]

    def document_segments(self, doc_id: str) -> list[tuple[str, str]]:
        """(segment_id, key) of a document's segments, in order."""
        with self._lock, self._guard():
            return [(sid, key) for sid, key in self._db.execute(
                "SELECT segment_id, key FROM segments WHERE doc_id = ? ORDER BY row", (doc_id,))]

    def document_count(self) -> int:
        with self._lock, self._guard():
            return int(self._db.execute("SELECT COUNT(DISTINCT doc_id) FROM segments").fetchone()[0])

    def key_in_use(self, key: str) -> bool:
        """Does any segment (of any document) use this store key?"""
        with self._lock, self._guard():
            return self._db.execute("SELECT 1 FROM segments WHERE key = ? LIMIT 1", (key,)).fetchone() is not None

    def update_tokens(self, segment_id: str, token_ids: tuple[int, ...], key: str) -> None:
        """Repair a record whose token ids (or key) disagree with its text."""
        with self._lock, self._guard():
            self._db.execute("UPDATE segments SET token_ids = ?, key = ? WHERE segment_id = ?",
                             (json.dumps(list(token_ids)), key, segment_id))

    # ------------------------------------------------------------------ reads
    def _row(self, sql: str, args) -> SegmentRecord | None:
        with self._lock, self._guard():
            r = self._db.execute(
                "SELECT segment_id, key, doc_id, title, text, token_ids, metadata FROM segments " + sql, args
            ).fetchone()
            if r is None:
                return None
            try:
                ids, metadata = json.loads(r[5]), json.loads(r[6])
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids) or not isinstance(metadata, dict):
                    raise ValueError("token_ids or metadata of the wrong type")
            except ValueError as exc:
                raise StoreError(f"{self._path}: segment {r[0]!r} has a damaged record ({exc}); {_REPAIR}") from None
            return SegmentRecord(r[0], r[1], r[2], r[3], r[4], tuple(ids), metadata)

    def get(self, segment_id: str) -> SegmentRecord | None:
        return self._row("WHERE segment_id = ?", (segment_id,))

    def find_by_text(self, text: str) -> SegmentRecord | None:
        return self._row("WHERE text = ?", (text,))

    def starting_with_line(self, line: str) -> list[SegmentRecord]:
        """Segments whose first line is `line` (candidates for matching stuffed prompt text)."""
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT segment_id FROM segments WHERE head = ?", (line.strip(),))]
        return [self.get(i) for i in ids]

    def records(self) -> list[SegmentRecord]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT segment_id FROM segments ORDER BY row")]
        return [self.get(i) for i in ids]

    def _searcher(self):
        faiss = _faiss()
        if self._gpu is None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            self._gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self._index)
        return self._gpu or self._index

    def search(self, vectors: np.ndarray, k: int) -> list[list[RetrievedSegment]]:
        """Top-k per query vector, best first."""
        if k < 1:
            raise RequestError(f"k must be >= 1, got {k}")
        with self._lock:
            if self._index.ntotal == 0:
                return [[] for _ in range(len(vectors))]
            scores, rows = self._searcher().search(np.asarray(vectors, dtype=np.float32), min(k, self._index.ntotal))
        out = []
        for score_row, id_row in zip(scores, rows):
            hits = []
            for score, row in zip(score_row, id_row):
                record = None if row < 0 else self._row("WHERE row = ?", (int(row),))
                if record is not None:  # an id with no record (a row deleted meanwhile) is no hit
                    hits.append(RetrievedSegment(record, float(score), len(hits)))
            out.append(hits)
        return out

    def close(self) -> None:
        self._db.close()
