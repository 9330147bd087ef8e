import numpy as np
import pytest

from hypic_rag.index.embedder import Embedder
from hypic_rag.index.segment_index import SegmentIndex, SegmentRecord


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def records(texts):
    return [SegmentRecord(f"d{i}#0", f"key{i}", f"d{i}", f"T{i}", t, (1, 2, i)) for i, t in enumerate(texts)]


def test_real_embedder_retrieves_the_matching_segment(tmp_path, embedder):
    texts = ["The capital of France is Paris.", "Bananas are yellow fruit.", "Rust is a systems language."]
    index = SegmentIndex(tmp_path, embedder.dim)
    index.add(records(texts), embedder.embed(texts))
    hits = index.search(embedder.embed(["Which fruit is yellow?"]), k=2)[0]
    assert hits[0].record.segment_id == "d1#0" and hits[0].score > hits[1].score and len(hits) == 2
    assert hits[0].record.token_ids == (1, 2, 1)


def test_index_persists_skips_duplicates_and_reopens_from_sqlite(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3, 8)).astype(np.float32)
    index = SegmentIndex(tmp_path, 8)
    index.add(records(["a", "b", "c"]), vecs)
    index.add(records(["a", "b", "c"]), vecs)  # same ids: skipped
    assert len(index) == 3
    index.close()
    again = SegmentIndex(tmp_path, 8)
    assert again.search(vecs[2:3], 1)[0][0].record.text == "c"
    assert again.find_by_text("b").segment_id == "d1#0"
    with pytest.raises(ValueError, match="k must be >= 1"):
        again.search(vecs[:1], 0)
    with pytest.raises(ValueError, match="3 records but 2 embeddings"):
        again.add(records(["x", "y", "z"]), vecs[:2])
