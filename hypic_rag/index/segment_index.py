"""Segment records in SQLite beside a FAISS inner-product index over their embeddings.

SQLite is the record of truth (segment id, store key, document, text, token ids, metadata, the
embedding and, for IVF indexes, each row's list and code); the FAISS index is rebuilt from it on
open (vector_state_sql.py), never read from a FAISS file, so a killed run, a damaged or crafted file
or another writer never leaves an index pointing at rows that were not committed or missing rows
that were. Which FAISS type serves the corpus follows its size (vector_index.py). Writers in several
processes coordinate through SQLite's own lock: inserts are idempotent (INSERT OR IGNORE) inside one
immediate transaction per batch, and a writer that finds the index retrained by another reloads it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hypic_rag.errors import RequestError, StoreError
from hypic_rag.index import vector_state_sql as vector_sql
from hypic_rag.index.anchor_table import AnchorTable
from hypic_rag.index.vector_index import IndexConfig, VectorIndex


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


class SegmentIndex(AnchorTable):
    def __init__(self, directory: str | Path, dim: int, body_of: Callable[[SegmentRecord], str] | None = None,
                 config: IndexConfig | None = None):
        """`body_of(record)`: the document text a record's prompt text was made from (its anchor is
        taken there, hypic_rag/index/anchors.py); default: the whole text. `config`: which FAISS index
        type serves the corpus at its size (IndexConfig)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self.body_of = body_of or (lambda record: record.text)
        self._lock = threading.RLock()  # callers may come from worker threads (LangChain, LlamaIndex)
        self._path = self.directory / "segments.sqlite"
        self.config = config or IndexConfig()
        self.config.check_dim(dim)
        with self._guard():
            self._db = sqlite3.connect(str(self._path), check_same_thread=False, timeout=120, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS segments (row INTEGER PRIMARY KEY, segment_id TEXT UNIQUE, key TEXT,"
                " doc_id TEXT, title TEXT, text TEXT, token_ids TEXT, metadata TEXT, embedding BLOB, head TEXT,"
                " list_no INTEGER, code BLOB)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_head ON segments(head)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_text ON segments(text)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_doc ON segments(doc_id)")
            self._db.execute("CREATE INDEX IF NOT EXISTS segments_key ON segments(key)")
            self._db.execute("CREATE TABLE IF NOT EXISTS anchors (hash INTEGER, length INTEGER, segment_id TEXT)")
            self._db.execute("CREATE INDEX IF NOT EXISTS anchors_hash ON anchors(hash)")
            vector_sql.ensure_schema(self._db)
            self._index = self._open_vectors()
        try:  # a FAISS file an earlier version wrote: never read, no longer kept
            (self.directory / "segments.faiss").unlink(missing_ok=True)
        except OSError:
            pass
        self._backfill_anchors()

    def _guard(self):
        """Turn SQLite's damage reports into one StoreError naming the file and the repair."""
        return _SqliteGuard(self._path)

    # ------------------------------------------------------------------ the vector index
    def _open_vectors(self) -> VectorIndex:
        """The vector index rebuilt from SQLite (vector_state_sql.py): FAISS files are never read. It is
        retrained when its stored state is damaged or the corpus now wants another type."""
        state, intact = vector_sql.read_state(self._db, self.dim)
        self._generation = vector_sql.generation(self._db)
        index = vector_sql.load(self._db, self.dim, self.config, state) if intact else None
        n = len(self)
        if index is not None and not index.needs_training(n):
            self.rebuilt_on_open = False
            return index
        self.rebuilt_on_open = bool(n)
        return self._retrain()

    def _retrain(self) -> VectorIndex:
        """Retrain and store the result in one write transaction; a database this process may not
        write (read-only) keeps the result in memory only."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "read-only" not in str(exc):
                raise
            rows, vecs = self._embeddings()
            index = VectorIndex(self.dim, self.config, VectorIndex.train(self.dim, self.config, vecs, self._generation))
            index.add(rows, vecs, index.encode(vecs)[0])
            return index
        try:
            index = None
            if vector_sql.generation(self._db) != self._generation:  # another process retrained first
                state, intact = vector_sql.read_state(self._db, self.dim)
                index = vector_sql.load(self._db, self.dim, self.config, state) if intact else None
                if index is not None and index.needs_training(len(self)):
                    index = None
            self._generation = vector_sql.generation(self._db) + (index is None)
            if index is None:
                index = self._checked(lambda: vector_sql.retrain(self._db, self.dim, self.config, self._generation))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return index

    def _embeddings(self):
        return self._checked(lambda: vector_sql.embeddings(self._db, self.dim))

    def _checked(self, read):
        try:
            return read()
        except ValueError as exc:  # a malformed embedding: SQLite is the record, so this needs a rebuild
            raise StoreError(f"{self._path}: {exc}; {_REPAIR}") from None

    def _in_step_with_other_writers(self) -> None:
        """Reload when another process retrained or changed the rows (called inside a write transaction)."""
        if vector_sql.generation(self._db) != self._generation or self._index.ntotal != len(self):
            state, intact = vector_sql.read_state(self._db, self.dim)
            self._generation = vector_sql.generation(self._db)
            index = vector_sql.load(self._db, self.dim, self.config, state) if intact else None
            if index is None:  # damaged meanwhile: retrain inside this transaction
                self._generation += 1
                index = self._checked(lambda: vector_sql.retrain(self._db, self.dim, self.config, self._generation))
            self._index = index

    @property
    def index_kind(self) -> str:
        """The FAISS index type in use now: flat, ivf_flat or ivf_pq."""
        return self._index.kind

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
        new, new_rows = [], []
        with self._guard():
            self._db.execute("BEGIN IMMEDIATE")  # the write lock first: no check-then-insert race
            try:
                self._in_step_with_other_writers()
                lists, codes = self._index.encode(vectors)
                for i, (record, vec) in enumerate(zip(records, vectors)):
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO segments (segment_id, key, doc_id, title, text, token_ids, metadata,"
                        " embedding, head, list_no, code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (record.segment_id, record.key, record.doc_id, record.title, record.text,
                         json.dumps(list(record.token_ids)), json.dumps(record.metadata),
                         np.asarray(vec, dtype=np.float32).tobytes(), head_of(record.text),
                         None if lists is None else int(lists[i]), None if codes is None else codes[i].tobytes()),
                    )
                    if cur.rowcount == 1:
                        new.append(i)
                        new_rows.append(cur.lastrowid)
                        self._insert_anchor(record)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if new:
                self._index.add(np.asarray(new_rows, dtype=np.int64), np.asarray(vectors, dtype=np.float32)[new],
                                None if lists is None else lists[new])
            if self._index.needs_training(len(self)):
                self._index = self._retrain()

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
                self._index.remove(np.asarray([r for r, _, _ in gone], dtype=np.int64))
                if self._index.ntotal != len(self):  # another process changed rows meanwhile
                    self._index = self._open_vectors()
                elif self._index.needs_training(len(self)):
                    self._index = self._retrain()
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

    def search(self, vectors: np.ndarray, k: int) -> list[list[RetrievedSegment]]:
        """Top-k per query vector, best first."""
        if k < 1:
            raise RequestError(f"k must be >= 1, got {k}")
        with self._lock:
            if self._index.ntotal == 0:
                return [[] for _ in range(len(vectors))]
            exact = lambda rows: self._checked(lambda: vector_sql.embeddings_of(self._db, self.dim, rows))  # noqa: E731
            scores, rows = self._index.search(vectors, min(k, self._index.ntotal), exact=exact)
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
