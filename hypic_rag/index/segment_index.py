"""Segment records in SQLite beside a FAISS inner-product index over their embeddings.

SQLite is the record of truth (segment id, store key, document, text, token ids, metadata and the
embedding); the FAISS index is rebuilt from it whenever the saved index file disagrees with it, so
a killed run never leaves an index pointing at rows that were not committed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SegmentRecord:
    segment_id: str
    key: str
    doc_id: str
    title: str
    text: str
    token_ids: tuple[int, ...]
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RetrievedSegment:
    record: SegmentRecord
    score: float
    rank: int


def head_of(text: str) -> str:
    """The first non-empty line of a segment's text, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _faiss():
    import faiss

    return faiss


class SegmentIndex:
    def __init__(self, directory: str | Path, dim: int):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.dim = dim
        self._lock = threading.RLock()  # callers may come from worker threads (LangChain, LlamaIndex)
        self._db = sqlite3.connect(str(self.directory / "segments.sqlite"), check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS segments (row INTEGER PRIMARY KEY, segment_id TEXT UNIQUE, key TEXT,"
            " doc_id TEXT, title TEXT, text TEXT, token_ids TEXT, metadata TEXT, embedding BLOB, head TEXT)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS segments_head ON segments(head)")
        self._db.execute("CREATE INDEX IF NOT EXISTS segments_text ON segments(text)")
        self._db.commit()
        self._index = self._load_or_rebuild()
        self._gpu = None

    # ------------------------------------------------------------------ persistence
    @property
    def _index_path(self) -> Path:
        return self.directory / "segments.faiss"

    def _empty(self):
        faiss = _faiss()
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _load_or_rebuild(self):
        faiss = _faiss()
        rows = self._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0]
        if self._index_path.exists():
            index = faiss.read_index(str(self._index_path))
            if index.ntotal == rows and index.d == self.dim:
                return index
        index = self._empty()
        for row, blob in self._db.execute("SELECT row, embedding FROM segments ORDER BY row"):
            index.add_with_ids(np.frombuffer(blob, dtype=np.float32)[None], np.array([row], dtype=np.int64))
        return index

    def _save_index(self) -> None:
        tmp = self._index_path.with_suffix(".faiss.tmp")
        _faiss().write_index(self._index, str(tmp))
        os.replace(tmp, self._index_path)

    # ------------------------------------------------------------------ writes
    def __contains__(self, segment_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM segments WHERE segment_id = ?", (segment_id,)).fetchone() is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM segments").fetchone()[0])

    def add(self, records: list[SegmentRecord], vectors: np.ndarray) -> None:
        """Add records with their embeddings in one transaction (existing segment ids are skipped)."""
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} embeddings")
        with self._lock:
            self._add(records, vectors)

    def _add(self, records: list[SegmentRecord], vectors: np.ndarray) -> None:
        new_rows, new_vecs = [], []
        with self._db:
            for record, vec in zip(records, vectors):
                if record.segment_id in self:
                    continue
                cur = self._db.execute(
                    "INSERT INTO segments (segment_id, key, doc_id, title, text, token_ids, metadata, embedding, head)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (record.segment_id, record.key, record.doc_id, record.title, record.text,
                     json.dumps(list(record.token_ids)), json.dumps(record.metadata),
                     np.asarray(vec, dtype=np.float32).tobytes(), head_of(record.text)),
                )
                new_rows.append(cur.lastrowid)
                new_vecs.append(vec)
        if new_rows:
            self._index.add_with_ids(np.asarray(new_vecs, dtype=np.float32), np.asarray(new_rows, dtype=np.int64))
            self._gpu = None
            self._save_index()

    # ------------------------------------------------------------------ reads
    def _row(self, sql: str, args) -> SegmentRecord | None:
        with self._lock:
            r = self._db.execute(
                "SELECT segment_id, key, doc_id, title, text, token_ids, metadata FROM segments " + sql, args
            ).fetchone()
        if r is None:
            return None
        return SegmentRecord(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), json.loads(r[6]))

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
            raise ValueError(f"k must be >= 1, got {k}")
        with self._lock:
            if self._index.ntotal == 0:
                return [[] for _ in range(len(vectors))]
            scores, rows = self._searcher().search(np.asarray(vectors, dtype=np.float32), min(k, self._index.ntotal))
        out = []
        for score_row, id_row in zip(scores, rows):
            hits = []
            for rank, (score, row) in enumerate((s, r) for s, r in zip(score_row, id_row) if r >= 0):
                record = self._row("WHERE row = ?", (int(row),))
                hits.append(RetrievedSegment(record, float(score), rank))
            out.append(hits)
        return out

    def close(self) -> None:
        self._db.close()
