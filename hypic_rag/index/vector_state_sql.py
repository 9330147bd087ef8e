"""The vector index's persisted state in the segment database (hypic_rag/index/vector_index.py).

One `ann_state` row holds the index type, a generation that every retraining bumps, the corpus size
it was trained at and its centroids (and PQ codebooks) as raw float32 bytes. Each segment row holds
its IVF list number and, for IVF-PQ, its code, written in the same transaction as the row, so the
index is rebuilt on open without a FAISS file and without assigning or encoding a vector again.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from hypic_rag.index.vector_index import IndexConfig, TrainedState, VectorIndex


def ensure_schema(db: sqlite3.Connection) -> None:
    """Add the per-row columns to a database an earlier version made (under the write lock: several
    processes may open it at once), and the state table."""
    wanted = (("list_no", "INTEGER"), ("code", "BLOB"))

    def missing():
        columns = {name for _, name, *_ in db.execute("PRAGMA table_info(segments)")}
        return [(name, kind) for name, kind in wanted if name not in columns]

    if missing():
        db.execute("BEGIN IMMEDIATE")
        try:
            for name, kind in missing():  # again under the lock: another process may have added them
                db.execute(f"ALTER TABLE segments ADD COLUMN {name} {kind}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    db.execute("CREATE TABLE IF NOT EXISTS ann_state (id INTEGER PRIMARY KEY CHECK (id = 0), kind TEXT,"
               " generation INTEGER, trained_rows INTEGER, nlist INTEGER, centroids BLOB, pq_m INTEGER, pq BLOB)")


def generation(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT generation FROM ann_state WHERE id = 0").fetchone()
    return int(row[0]) if row and isinstance(row[0], int) else 0


def read_state(db: sqlite3.Connection, dim: int) -> tuple[TrainedState | None, bool]:
    """(state, intact): None for flat; intact is False where the row is damaged or does not fit dim."""
    row = db.execute("SELECT kind, generation, trained_rows, nlist, centroids, pq_m, pq FROM ann_state"
                     " WHERE id = 0").fetchone()
    if row is None or row[0] == "flat":
        return None, True
    kind, gen, trained, nlist, centroids, pq_m, pq = row
    try:
        if not all(isinstance(v, int) for v in (gen, trained, nlist)) or not isinstance(centroids, bytes):
            return None, False
        c = np.frombuffer(centroids, dtype=np.float32)
        if nlist < 1 or c.size != nlist * dim:
            return None, False
        p = None
        if kind == "ivf_pq":
            if not isinstance(pq_m, int) or pq_m < 1 or dim % pq_m or not isinstance(pq, bytes):
                return None, False
            p = np.frombuffer(pq, dtype=np.float32)
            if p.size != 256 * dim:
                return None, False
            p = p.reshape(pq_m, 256, dim // pq_m)
        state = TrainedState(kind, gen, trained, c.reshape(nlist, dim), p)
    except (TypeError, ValueError):
        return None, False
    return (state, True) if state.check(dim) else (None, False)


def write_state(db: sqlite3.Connection, kind: str, gen: int, state: TrainedState | None, trained_rows: int) -> None:
    if state is None:
        db.execute("INSERT OR REPLACE INTO ann_state VALUES (0, ?, ?, ?, 0, NULL, NULL, NULL)", (kind, gen, trained_rows))
        return
    pq = state.pq_centroids
    db.execute("INSERT OR REPLACE INTO ann_state VALUES (0, ?, ?, ?, ?, ?, ?, ?)",
               (state.kind, gen, state.trained_rows, state.nlist, state.centroids.tobytes(),
                None if pq is None else pq.shape[0], None if pq is None else pq.tobytes()))


def _embedding(blob, dim: int, row: int) -> np.ndarray:
    vec = np.frombuffer(blob, dtype=np.float32) if isinstance(blob, bytes) else np.empty(0, np.float32)
    if vec.shape != (dim,):
        raise ValueError(f"segment row {row} holds a {vec.size}-value embedding, the index expects {dim}")
    return vec


def embeddings(db: sqlite3.Connection, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, embeddings) of every segment, in row order (ValueError naming a malformed one)."""
    rows, vecs = [], []
    for row, blob in db.execute("SELECT row, embedding FROM segments ORDER BY row"):
        vecs.append(_embedding(blob, dim, row))
        rows.append(row)
    return np.asarray(rows, dtype=np.int64), (np.stack(vecs) if vecs else np.empty((0, dim), np.float32))


def embeddings_of(db: sqlite3.Connection, dim: int, rows: np.ndarray) -> np.ndarray:
    """Embeddings of these rows, in their order (zeros for a row deleted meanwhile)."""
    found = {}
    ids = [int(r) for r in rows]
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        for row, blob in db.execute(f"SELECT row, embedding FROM segments WHERE row IN ({','.join('?' * len(part))})",
                                    part):
            found[row] = _embedding(blob, dim, row)
    zero = np.zeros(dim, np.float32)
    return np.stack([found.get(r, zero) for r in ids]) if ids else np.empty((0, dim), np.float32)


def load(db: sqlite3.Connection, dim: int, config: IndexConfig, state: TrainedState | None) -> VectorIndex | None:
    """The index of this state filled from the stored rows; None where a row's list or code is missing
    or out of range (then it is retrained)."""
    index = VectorIndex(dim, config, state)
    column = "code" if index.kind == "ivf_pq" else "embedding"
    rows, lists, codes = [], [], []
    width = index.code_size or 4 * dim
    for row, list_no, code in db.execute(f"SELECT row, list_no, {column} FROM segments ORDER BY row"):
        if not isinstance(code, bytes) or len(code) != width or (state is not None and not isinstance(list_no, int)):
            return None
        rows.append(row)
        lists.append(list_no if state is not None else 0)
        codes.append(code)
    packed = np.frombuffer(b"".join(codes), dtype=np.uint8).reshape(len(codes), width)
    return index if index.load(np.asarray(rows, np.int64), np.asarray(lists, np.int64), packed) else None


def retrain(db: sqlite3.Connection, dim: int, config: IndexConfig, gen: int) -> VectorIndex:
    """Train the type this corpus wants on its embeddings, store each row's list and code and the new
    state (generation gen), and return the filled index. The caller holds the write transaction."""
    rows, vecs = embeddings(db, dim)
    state = VectorIndex.train(dim, config, vecs, gen)
    index = VectorIndex(dim, config, state)
    lists, codes = index.encode(vecs)
    if state is not None:
        db.executemany("UPDATE segments SET list_no = ?, code = ? WHERE row = ?",
                       ((int(l), None if codes is None else codes[i].tobytes(), int(r))
                        for i, (l, r) in enumerate(zip(lists, rows))))
    write_state(db, index.kind, gen, state, len(rows))
    if index.kind == "ivf_pq":
        index.load(rows, lists, codes)
    else:
        index.add(rows, vecs, lists)
    return index
