"""LlamaIndex integration with real llama-index-core components."""

import pytest
from llama_index.core import Settings
from llama_index.core.query_engine import RetrieverQueryEngine

from conftest import demo_docs, demo_rag
from llama_index_hypic_rag import HypicQueryEngine, HypicRAGLLM, HypicRAGRetriever


@pytest.fixture(autouse=True)
def local_tokenizer():
    """LlamaIndex's default tokenizer (tiktoken) downloads its vocabulary; use the model's own."""
    previous = Settings._tokenizer
    Settings.tokenizer = demo_rag().tokenizer.encode
    yield
    Settings._tokenizer = previous


def test_retriever_returns_segment_nodes():
    rag = demo_rag()
    name = demo_docs(12)[6]["title"]
    nodes = HypicRAGRetriever(rag=rag, k=3).retrieve(f"What does {name} like to eat?")
    assert len(nodes) == 3 and nodes[0].node.node_id == f"{name}#0" and nodes[0].score >= nodes[1].score
    assert nodes[0].node.get_content(metadata_mode="llm") == rag.index.get(f"{name}#0").text
    with pytest.raises(ValueError, match="k must be"):
        HypicRAGRetriever(rag=rag, k=0)


def test_custom_query_engine_passes_segment_ids():
    rag = demo_rag()
    name = demo_docs(12)[7]["title"]
    engine = HypicQueryEngine(retriever=HypicRAGRetriever(rag=rag, k=2), max_new_tokens=6)
    response = engine.query(f"Where was {name} born?")
    direct = rag.query(f"Where was {name} born?", k=2, max_new_tokens=6)
    assert response.response == direct.answer
    assert [n.node.node_id for n in response.source_nodes] == direct.segment_ids
    assert response.metadata["segment_hits"] == 2 and response.metadata["segment_misses"] == 0


def test_retriever_query_engine_with_stuffed_text_hits_the_cache():
    rag = demo_rag()
    name = demo_docs(12)[8]["title"]
    llm = HypicRAGLLM(rag=rag, max_new_tokens=4)
    engine = RetrieverQueryEngine.from_args(HypicRAGRetriever(rag=rag, k=3), llm=llm)
    before = {s.name: s.hits for s in rag.store.stats()}
    response = engine.query(f"Where was {name} born?")
    after = {s.name: s.hits for s in rag.store.stats()}
    assert isinstance(response.response, str)
    assert sum(after.values()) - sum(before.values()) >= 3  # the three stuffed segments came from the cache
    streamed = list(llm.stream_complete("Question: where?\nAnswer:"))
    assert streamed[-1].additional_kwargs["segment_ids"] == [] and streamed[-1].text == streamed[-2].text


def test_lazy_store_dir():
    rag = demo_rag()
    llm = HypicRAGLLM(store_dir=str(rag.directory), max_new_tokens=2)
    assert isinstance(llm.complete("Question: where?\nAnswer:").text, str)
    with pytest.raises(ValueError, match="pass rag="):
        HypicRAGLLM().complete("x")


def test_llm_honours_stop_temperature_and_seed_per_call():
    rag = demo_rag()
    llm = HypicRAGLLM(rag=rag, max_new_tokens=12)
    prompt = "Question: where?\nAnswer:"
    full = llm.complete(prompt, temperature=0.0).text
    assert len(full) > 2
    stopped = llm.complete(prompt, stop=[full[1:3]])
    assert stopped.text == full[: full.index(full[1:3])] and stopped.raw["finish_reason"] == "stop"
    hot = [llm.complete(prompt, temperature=1.5, seed=s).text for s in (1, 1, 2, 3, 4)]
    assert hot[0] == hot[1] and len(set(hot)) > 1  # the seed fixes a sample; temperature makes them differ
    assert HypicRAGLLM(rag=rag, max_new_tokens=12, stop=[full[1:3]]).complete(prompt).text == stopped.text


def test_one_callback_event_per_call_sync_and_async():
    """complete, stream_complete, acomplete and astream_complete each emit one LLM event (token counters
    built on the events count each call once)."""
    import asyncio

    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    handler = LlamaDebugHandler()
    llm = HypicRAGLLM(rag=demo_rag(), max_new_tokens=6, callback_manager=CallbackManager([handler]))
    prompt = "Question: where?\nAnswer:"
    want = llm.complete(prompt).text
    assert "".join(r.delta for r in llm.stream_complete(prompt)) == want

    async def both():
        text = (await llm.acomplete(prompt)).text
        pieces = [r.delta async for r in await llm.astream_complete(prompt)]
        return text, "".join(pieces)

    assert asyncio.run(both()) == (want, want)
    assert len(handler.get_event_pairs(CBEventType.LLM)) == 4


def test_astream_complete_tasks_at_once_and_a_cancelled_one():
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    llm = HypicRAGLLM(rag=demo_rag(), max_new_tokens=6)
    prompts = [f"Question: where was {d['title']} born?\nAnswer:" for d in demo_docs(12)[:3]]
    want = [llm.complete(p).text for p in prompts]

    async def one(prompt):
        return "".join([r.delta async for r in await llm.astream_complete(prompt)])

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8))
        cancelled = asyncio.create_task(one(prompts[0]))
        await asyncio.sleep(0)
        cancelled.cancel()
        got = await asyncio.gather(*[one(p) for p in prompts])
        return got, await asyncio.gather(cancelled, return_exceptions=True)

    got, (outcome,) = asyncio.run(asyncio.wait_for(main(), 120))
    assert got == want and isinstance(outcome, asyncio.CancelledError)


def test_ingestion_pipeline_upserts_documents_through_the_docstore(tmp_path):
    """A stock IngestionPipeline with a docstore (UPSERTS) over HypicRAGVectorStore: new documents are
    ingested, unchanged ones skipped, an edited one replaces its old segments."""
    from llama_index.core import Document
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from hypic_rag.api import SHIPPED_MODEL, HypicRAG
    from llama_index_hypic_rag import HypicRAGEmbedding, HypicRAGVectorStore

    alice = "Alice Marrow was born in Lisbon. She works as a baker."
    bob = "Bob Kestrel was born in Oslo. He works as a pilot."
    with HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL) as rag:
        pipeline = IngestionPipeline(transformations=[HypicRAGEmbedding(rag)], vector_store=HypicRAGVectorStore(rag),
                                     docstore=SimpleDocumentStore(), docstore_strategy=DocstoreStrategy.UPSERTS)
        docs = [Document(text=alice, id_="alice"), Document(text=bob, id_="bob")]
        assert len(pipeline.run(documents=docs)) == 2
        keys = {r.segment_id: r.key for r in rag.index.records()}
        assert pipeline.run(documents=docs) == [] and {r.segment_id: r.key for r in rag.index.records()} == keys
        changed = pipeline.run(documents=[Document(text=alice.replace("Lisbon", "Porto"), id_="alice"), docs[1]])
        assert len(changed) == 1
        texts = [r.text for r in rag.index.records()]
        assert {r.doc_id for r in rag.index.records()} == {"alice", "bob"}
        assert any("Porto" in t for t in texts) and not any("Lisbon" in t for t in texts)
        query = VectorStoreQuery(query_str="Where was Alice Marrow born?", similarity_top_k=1)
        result = HypicRAGVectorStore(rag).query(query)
        assert "Porto" in result.nodes[0].text


def test_cache_figures_reach_a_stock_engines_response_metadata():
    from llama_index.core.query_engine import RetrieverQueryEngine

    rag = demo_rag()
    name = demo_docs(12)[9]["title"]
    engine = RetrieverQueryEngine.from_args(HypicRAGRetriever(rag=rag, k=2), llm=HypicRAGLLM(rag=rag, max_new_tokens=4))
    response = engine.query(f"Where was {name} born?")
    figures = [meta["hypic_rag"] for meta in response.metadata.values()]
    assert len(figures) == 2 and all(f["segment_hits"] == 2 and f["segment_misses"] == 0 for f in figures)
    assert all(f["timings"]["ttft"] > 0 and f["cached_tokens"] > 0 for f in figures)
