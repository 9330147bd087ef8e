"""The FAISS index type follows the corpus size: flat, then IVF-Flat, then IVF-PQ, trained on a
sample, grown incrementally, retrained on growth, and rebuilt on open from SQLite alone (real FAISS,
real SQLite; two connections stand for two processes)."""

import sqlite3

import numpy as np
import pytest

from hypic_rag.errors import RequestError
from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord
from hypic_rag.index.vector_index import IndexConfig, VectorIndex

DIM = 16


def clustered(n, seed=0, clusters=40):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, DIM))
    x = centers[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def records(start, n):
    return [SegmentRecord(f"d{i}#0", f"k{i}", f"d{i}", f"t{i}", f"text {i}", (i,)) for i in range(start, start + n)]


def ids(index, queries, k=10):
    return [[h.record.segment_id for h in hits] for hits in index.search(queries, k)]


def recall(found, truth):
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def exact_top(vectors, queries, k=10):
    return [[f"d{i}#0" for i in np.argsort(-(vectors @ q), kind="stable")[:k]] for q in queries]


@pytest.mark.parametrize("bad", [dict(kind="hnsw"), dict(nprobe=0), dict(train_per_list=10), dict(retrain_growth=1),
                                 dict(flat_below=-1), dict(refine=0), dict(nlist=1.5)])
def test_a_bad_index_setting_is_refused_with_what_is_allowed(bad):
    with pytest.raises(RequestError, match="index"):
        IndexConfig(**bad)


def test_an_explicit_pq_size_that_does_not_divide_the_dimension_is_refused():
    with pytest.raises(RequestError, match=r"pq_bytes \(5\) must divide the embedding dimension \(16\)"):
        SegmentIndex("/tmp/never-made", DIM, config=IndexConfig(kind="ivf_pq", pq_bytes=5))
    assert IndexConfig(pq_bytes=48).pq_bytes_for(40) == 40 and IndexConfig(pq_bytes=48).pq_bytes_for(384) == 48


def test_auto_picks_the_type_by_corpus_size():
    config = IndexConfig(flat_below=100_000, pq_from=2_000_000)
    assert [config.kind_for(n) for n in (10_000, 100_000, 1_999_999, 2_000_000)] == [
        "flat", "ivf_flat", "ivf_flat", "ivf_pq"]
    assert config.lists_for(100_000) == 256 and config.lists_for(1_000_000) == 1024
    # an IVF type is only trained once there are enough points per list
    assert IndexConfig(kind="ivf_flat").kind_for(300) == "flat"


def test_the_index_grows_from_flat_into_ivf_and_reopens_from_sqlite_alone(tmp_path):
    config = IndexConfig(flat_below=2000, nprobe=8)
    vecs = clustered(3000)
    index = SegmentIndex(tmp_path, DIM, config=config)
    index.add(records(0, 1500), vecs[:1500])
    assert index.index_kind == "flat"
    index.add(records(1500, 1000), vecs[1500:2500])
    assert index.index_kind == "ivf_flat" and index._index.state.trained_rows == 2500
    queries = clustered(50, seed=1)
    truth = exact_top(vecs[:2500], queries)
    before = ids(index, queries)
    assert recall(before, truth) >= 0.95
    generation = index._generation
    index.add(records(2500, 500), vecs[2500:])  # joins the trained lists: no retraining
    assert index._generation == generation and index._index.ntotal == 3000
    assert ids(index, vecs[2990:2991], 1) == [["d2990#0"]]
    index.close()
    again = SegmentIndex(tmp_path, DIM, config=config)
    assert not again.rebuilt_on_open and again.index_kind == "ivf_flat"
    assert recall(ids(again, queries), exact_top(vecs, queries)) >= 0.95
    assert again._index.ntotal == 3000


def test_growth_past_the_training_retrains_and_deletes_leave_the_lists(tmp_path):
    config = IndexConfig(kind="ivf_flat", retrain_growth=1.5, nprobe=16)
    vecs = clustered(4000)
    index = SegmentIndex(tmp_path, DIM, config=config)
    index.add(records(0, 2000), vecs[:2000])
    assert index.index_kind == "ivf_flat" and index._index.state.trained_rows == 2000
    first = index._generation
    index.add(records(2000, 2000), vecs[2000:])
    assert index._generation == first + 1 and index._index.state.trained_rows == 4000
    index.delete_documents([f"d{i}" for i in range(0, 4000, 2)])
    found = ids(index, vecs[:20], 1)
    assert all(f and int(f[0][1:-2]) % 2 == 1 for f in found)  # no deleted segment comes back
    assert index._index.ntotal == 2000 == len(index)


def test_ivf_pq_rescores_its_candidates_exactly_and_persists_its_codes(tmp_path):
    config = IndexConfig(kind="ivf_pq", pq_bytes=4, nprobe=16, refine=8)
    vecs = clustered(12_000)
    index = SegmentIndex(tmp_path, DIM, config=config)
    index.add(records(0, 12_000), vecs)
    assert index.index_kind == "ivf_pq"
    queries = clustered(50, seed=2)
    truth = exact_top(vecs, queries)
    found = ids(index, queries)
    assert recall(found, truth) >= 0.9
    hit = index.search(queries[:1], 1)[0][0]
    assert hit.score == pytest.approx(float(vecs[int(hit.record.segment_id[1:-2])] @ queries[0]), abs=1e-5)
    with sqlite3.connect(tmp_path / "segments.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM segments WHERE length(code) = 4").fetchone()[0] == 12_000
    index.close()
    again = SegmentIndex(tmp_path, DIM, config=config)
    assert not again.rebuilt_on_open and ids(again, queries) == found


@pytest.mark.parametrize("damage", [
    "UPDATE ann_state SET centroids = X'00ff'",
    "UPDATE ann_state SET nlist = 99999999",
    "UPDATE segments SET list_no = 1000000000 WHERE row = 5",
    "UPDATE segments SET list_no = -3 WHERE row = 7",
    "UPDATE segments SET list_no = NULL WHERE row = 9",
    "UPDATE ann_state SET kind = 'hnsw'",
])
def test_a_damaged_or_crafted_state_is_retrained_never_handed_to_faiss(tmp_path, damage):
    config = IndexConfig(kind="ivf_flat", nprobe=16)
    vecs = clustered(2500)
    index = SegmentIndex(tmp_path, DIM, config=config)
    index.add(records(0, 2500), vecs)
    index.close()
    with sqlite3.connect(tmp_path / "segments.sqlite") as db:
        db.execute(damage)
    again = SegmentIndex(tmp_path, DIM, config=config)
    assert again.rebuilt_on_open and again.index_kind == "ivf_flat"
    assert ids(again, vecs[[5, 7, 9]], 1) == [["d5#0"], ["d7#0"], ["d9#0"]]
    again.close()
    assert not SegmentIndex(tmp_path, DIM, config=config).rebuilt_on_open  # the repair was stored


def test_a_writer_finding_the_index_retrained_by_another_reloads_it(tmp_path):
    config = IndexConfig(flat_below=2000, retrain_growth=1.5, nprobe=16)
    vecs = clustered(4000)
    a = SegmentIndex(tmp_path, DIM, config=config)
    a.add(records(0, 1000), vecs[:1000])
    b = SegmentIndex(tmp_path, DIM, config=config)  # a second connection, as another process has
    b.add(records(1000, 1500), vecs[1000:2500])  # crosses flat_below: b trains IVF
    assert a.index_kind == "flat" and b.index_kind == "ivf_flat"
    a.add(records(2500, 100), vecs[2500:2600])  # a sees the new generation first, then assigns lists
    assert a.index_kind == "ivf_flat" and a._generation == b._generation and a._index.ntotal == 2600
    with sqlite3.connect(tmp_path / "segments.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM segments WHERE list_no IS NULL").fetchone()[0] == 0
    assert ids(a, vecs[[10, 2000, 2550]], 1) == [["d10#0"], ["d2000#0"], ["d2550#0"]]


def test_a_vector_index_filled_from_its_stored_pieces_equals_one_built_by_adding():
    config = IndexConfig(kind="ivf_pq", pq_bytes=4, nprobe=8)
    vecs = clustered(12_000)
    rows = np.arange(12_000, dtype=np.int64) * 3 + 1
    state = VectorIndex.train(DIM, config, vecs, generation=1)
    built = VectorIndex(DIM, config, state)
    lists, codes = built.encode(vecs)
    built.add(rows, vecs, lists)
    loaded = VectorIndex(DIM, config, state)
    assert loaded.load(rows, lists, codes)
    q = clustered(20, seed=3)
    (sa, ia), (sb, ib) = built.search(q, 10), loaded.search(q, 10)
    assert np.array_equal(ia, ib) and np.array_equal(sa, sb)
    assert not VectorIndex(DIM, config, state).load(rows, np.full(len(rows), state.nlist), codes)
