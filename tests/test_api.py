"""HypicRAG end to end on the shipped model and the demo corpus (real embedder, FAISS, diskcache)."""

import pytest

from conftest import demo_docs, shipped_model
from hypic_rag.api import HypicRAG, QueryResult
from hypic_rag.config import ExecutorConfig


@pytest.fixture(scope="module")
def rag(tmp_path_factory):
    model, tok = shipped_model()
    directory = tmp_path_factory.mktemp("store")
    r = HypicRAG.create(directory, model=model, tokenizer=tok)
    report = r.ingest(demo_docs(12))
    assert report.documents == 12 and report.new_segments == report.segments == report.entries_computed
    yield r
    r.close()


def test_query_retrieves_gold_document_and_reports_timings(rag):
    doc = demo_docs(12)[3]
    result = rag.query(f"Where was {doc['title']} born?", k=3, max_new_tokens=6)
    assert isinstance(result, QueryResult)
    assert result.segment_ids[0] == f"{doc['title']}#0" and len(result.segments) == 3
    t = result.timings
    assert t.ttft > 0 and t.seam > 0 and result.retrieval_seconds > 0
    assert t.prefill == 0  # the question rode in the one seam pass
    assert result.generation.segment_hits == 3 and sum(result.tier_hits.values()) == 3
    assert isinstance(result.answer, str)


def test_stream_yields_text_then_result(rag):
    items = list(rag.stream("What is the job of somebody?", k=2, max_new_tokens=4))
    assert isinstance(items[-1], QueryResult) and all(isinstance(i, str) for i in items[:-1])
    assert "".join(items[:-1]).strip().split("\n")[0].strip() == items[-1].answer


def test_explicit_segment_ids_and_other_modes(rag):
    ids = [f"{d['title']}#0" for d in demo_docs(12)[:2]]
    hypic = rag.query("Where was Kamo born?", segment_ids=ids, max_new_tokens=3)
    assert hypic.segment_ids == ids
    full = rag.query("Where was Kamo born?", segment_ids=ids, max_new_tokens=3, mode="full_recompute")
    assert full.generation.cached_tokens == 1  # only the shared BOS prefix
    with pytest.raises(ValueError, match="unknown segment id 'nope#0'"):
        rag.query("x", segment_ids=["nope#0"])


def test_reingest_is_a_no_op(rag):
    report = rag.ingest(demo_docs(12))
    assert report.new_segments == 0 and report.entries_computed == 0


def test_reopen_from_store_reads_disk_tier(rag):
    model, tok = shipped_model()
    again = HypicRAG.from_store(rag.directory, model=model, tokenizer=tok)
    doc = demo_docs(12)[5]
    result = again.query(f"What does {doc['title']} like to eat?", k=2, max_new_tokens=3)
    assert result.tier_hits["disk"] == 2 and result.generation.segment_misses == 0
    again.close()


def test_store_for_another_setting_is_refused(rag):
    model, tok = shipped_model()
    with pytest.raises(ValueError, match="was built for model fingerprint"):
        HypicRAG.from_store(rag.directory, model=model, tokenizer=tok, config=ExecutorConfig(seam_tokens=4))


def test_bad_query_inputs(rag, tmp_path):
    with pytest.raises(ValueError, match="non-empty string"):
        rag.query("   ")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rag.query("q", k=0)
    model, tok = shipped_model()
    empty = HypicRAG.create(tmp_path / "empty", model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="no segments yet"):
        empty.query("anything")
    with pytest.raises(ValueError, match="not a hypic_rag store"):
        HypicRAG.from_store(tmp_path)
    with pytest.raises(ValueError, match="store directory does not exist"):
        HypicRAG.from_store(tmp_path / "missing")


def test_a_rung_with_other_entries_never_writes_them_into_the_store(tmp_path):
    from conftest import demo_docs

    from hypic_rag.api import SHIPPED_MODEL, HypicRAG

    rag = HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL)
    rag.ingest(demo_docs(3))
    stored = sorted(rag.store.disk.keys())
    result = rag.query("What is the home city of the first person?", k=3, mode="pic_transition_rope", max_new_tokens=2)
    assert result.generation.segment_misses == 3  # seam-0 entries: computed for the request
    assert sorted(rag.store.disk.keys()) == stored  # and kept out of a store whose manifest records seam 8
    again = rag.query("What is the home city of the first person?", k=3, mode="pic_transition_rope", max_new_tokens=2)
    assert again.generation.segment_hits == 3  # from memory
    rag.close()


def test_executors_over_one_model_share_its_bundle_and_prefix_cache(tmp_path):
    from hypic_rag.api import SHIPPED_MODEL, HypicRAG
    from hypic_rag.config import PromptTemplate

    rag = HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL, template=PromptTemplate(system="Answer briefly."))
    other = rag.executor_for("pic_transition_rope")
    assert other is not rag.executor and other.loaded is rag.executor.loaded is rag.loaded
    assert other.prefix_cache is rag.executor.prefix_cache is not None  # the system prompt ran once
    assert other.spec is rag.executor.spec and other.fingerprint != rag.executor.fingerprint  # seam 0 vs 8
    rag.close()


def test_reprs_are_compact_and_the_store_closes_as_a_context_manager(tmp_path):
    from conftest import demo_docs
    from hypic_rag.api import SHIPPED_MODEL, HypicRAG

    with HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL) as rag:
        rag.ingest(demo_docs(3))
        result = rag.query(f"Where was {demo_docs(3)[0]['title']} born?", k=2, max_new_tokens=8)
        for thing in (result, result.generation, result.segments[0], result.segments[0].record, rag):
            assert len(repr(thing)) < 400, repr(thing)
        assert "QueryResult(answer=" in repr(result) and "token_ids" not in repr(result)
    with pytest.raises(Exception, match="closed"):
        rag.query("Where?", k=1)
    rag.close()  # a second close does nothing
