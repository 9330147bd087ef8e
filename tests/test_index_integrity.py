"""The segment index against damaged files, edited rows and concurrent writers (real SQLite, real
FAISS files, real subprocesses)."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import demo_docs
from hypic_rag.errors import StoreError
from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord

DIM = 8


def filled_index(path, n=20):
    index = SegmentIndex(path, DIM)
    vecs = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    records = [SegmentRecord(f"d{i}#0", f"k{i}", f"d{i}", f"t{i}", f"text {i}", (i + 3,)) for i in range(n)]
    index.add(records, vecs)
    return index, vecs


def top(index, vec):
    return index.search(vec[None], 1)[0][0].record.segment_id


def test_no_faiss_file_is_ever_read(tmp_path, monkeypatch):
    import faiss

    index, vecs = filled_index(tmp_path)
    index.close()
    # what an earlier version kept, here crafted to declare more than it holds: never opened, removed
    (tmp_path / "segments.faiss").write_bytes(b"\xff" * 64)

    def refuse(*args, **kwargs):
        raise AssertionError("a FAISS file was read")

    monkeypatch.setattr(faiss, "read_index", refuse)
    reopened = SegmentIndex(tmp_path, DIM)
    assert not reopened.rebuilt_on_open and not (tmp_path / "segments.faiss").exists()
    assert [top(reopened, v) for v in vecs] == [f"d{i}#0" for i in range(len(vecs))]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_sqlite_file_gives_one_clear_error(tmp_path, damage):
    index, _ = filled_index(tmp_path, n=400)
    index.close()
    db = tmp_path / "segments.sqlite"
    data = db.read_bytes()
    db.write_bytes(b"this is not sqlite" * 100 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(StoreError, match=r"segments.sqlite .*hypic-rag precompute CORPUS --store DIR"):
        reopened = SegmentIndex(tmp_path, DIM)
        reopened.records()


def test_an_edited_token_id_in_the_index_is_repaired_from_the_text(tmp_path):
    from hypic_rag.api import SHIPPED_MODEL, HypicRAG

    docs = demo_docs(4)
    rag = HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL)
    rag.ingest(docs)
    question = f"What is the home city of {docs[1]['title']}?"
    clean = rag.query(question, k=2, max_new_tokens=6)
    rag.close()
    db = sqlite3.connect(tmp_path / "store" / "index" / "segments.sqlite")
    (sid, ids), = db.execute("SELECT segment_id, token_ids FROM segments WHERE segment_id = ?",
                             (clean.segment_ids[0],)).fetchall()
    ids = json.loads(ids)
    ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 100  # one changed digit
    with db:
        db.execute("UPDATE segments SET token_ids = ? WHERE segment_id = ?", (json.dumps(ids), sid))
    db.close()
    rag = HypicRAG.from_store(tmp_path / "store")
    again = rag.query(question, k=2, max_new_tokens=6)
    assert again.answer == clean.answer and again.generation.token_ids == clean.generation.token_ids
    assert rag.index.get(sid).token_ids == clean.segments[0].record.token_ids  # repaired in place
    rag.close()


def test_two_processes_precomputing_one_corpus_into_one_store(tmp_path):
    docs = [{"id": f"note-{i}", "title": f"Note {i}", "text": f"Item {i} is kept in room {i * 7 % 13}."}
            for i in range(300)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "hypic_rag.cli.main", "precompute", str(corpus), "--store", str(store),
           "--batch-size", "2"]
    first = subprocess.run(cmd[:-2] + ["--batch-size", "300"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr  # creates the store (and its manifest) alone
    import shutil

    shutil.rmtree(store / "index")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "IntegrityError" not in err and "Traceback" not in err
    with sqlite3.connect(store / "index" / "segments.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT segment_id) FROM segments").fetchone() == (300, 300)
    reopened = SegmentIndex(store / "index", 384)
    assert reopened._index.ntotal == 300
