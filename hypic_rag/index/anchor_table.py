"""The index's anchor table: each segment's word-run anchor (hypic_rag/index/anchors.py), so that
prompt matching finds candidate segments with one SQLite lookup per window of prompt words.
Mixed into SegmentIndex (its connection, lock and damage guard)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hypic_rag.index.anchors import anchor_of

if TYPE_CHECKING:
    from hypic_rag.index.segment_index import SegmentRecord


class AnchorTable:
    def _insert_anchor(self, record: SegmentRecord) -> None:
        anchor = anchor_of(self.body_of(record))
        if anchor is not None:
            self._db.execute("INSERT INTO anchors (hash, length, segment_id) VALUES (?, ?, ?)",
                             (anchor[0], anchor[1], record.segment_id))

    def _backfill_anchors(self) -> None:
        """A store written before anchors existed gets them once, on open."""
        with self._lock, self._guard():
            if self._db.execute("SELECT 1 FROM anchors LIMIT 1").fetchone() is not None or len(self) == 0:
                return
        records = self.records()
        with self._lock, self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    self._insert_anchor(record)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def anchor_lengths(self) -> list[int]:
        with self._lock, self._guard():
            return sorted(n for (n,) in self._db.execute("SELECT DISTINCT length FROM anchors"))

    def anchored(self, hashes: list[int]) -> dict[int, list[str]]:
        """Segment ids by anchor hash, for the hashes given."""
        out: dict[int, list[str]] = {}
        with self._lock, self._guard():
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                rows = self._db.execute(f"SELECT hash, segment_id FROM anchors WHERE hash IN ({','.join('?' * len(chunk))})",
                                        chunk)
                for h, sid in rows:
                    out.setdefault(h, []).append(sid)
        return out
