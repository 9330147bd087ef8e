"""Cached documents are found in a prompt whatever its formatting, and nothing of the prompt is stored."""

import json

import pytest

from conftest import demo_docs, demo_rag

QUESTION = "\nQuestion: Where was the first person born?\nAnswer:"


def _records(rag, n=3):
    name = demo_docs(12)[6]["title"]
    return [s.record for s in rag.retrieve(f"Where was {name} born?", k=n)]


def _body(rag, record):
    return rag.template.body_of(record.text, record.title)


FORMATS = {
    "as stored": lambda rag, rs: "".join(r.text for r in rs),
    "numbered": lambda rag, rs: "".join(f"[{i + 1}] {r.text}" for i, r in enumerate(rs)),
    "bulleted": lambda rag, rs: "".join(f"- {r.text}" for r in rs),
    "tagged on one line": lambda rag, rs: "".join(f"<doc>{' '.join(r.text.split())}</doc>" for r in rs),
    "newlines flattened": lambda rag, rs: " ".join(" ".join(r.text.split()) for r in rs),
    "json": lambda rag, rs: json.dumps([{"title": r.title, "content": _body(rag, r)} for r in rs]),
    "raw text of the user's own store": lambda rag, rs: "\n\n".join(_body(rag, r).strip() for r in rs),
    "metadata headers": lambda rag, rs: "".join(f"Source: {r.doc_id}\nScore: 0.9\n{r.text}\n" for r in rs),
}


@pytest.mark.parametrize("style", list(FORMATS))
def test_every_document_is_a_hit_whatever_the_formatting(style):
    rag = demo_rag()
    records = _records(rag)
    size = len(rag.store)
    result = rag.query_prompt("Use the documents below.\n" + FORMATS[style](rag, records) + QUESTION, max_new_tokens=2)
    assert (result.generation.segment_hits, result.generation.segment_misses) == (len(records), 0), style
    assert result.segment_ids == [r.segment_id for r in records]
    assert len(rag.store) == size  # the instructions, headers and question were not stored


def test_a_hundred_distinct_questions_leave_the_store_unchanged():
    rag = demo_rag()
    records = _records(rag, 2)
    size, segments = len(rag.store), len(rag.index)
    for i in range(100):
        prompt = f"Request {i}. Source: user-{i}\n" + FORMATS["numbered"](rag, records) + f"\nQuestion {i}: who?\nAnswer:"
        rag.query_prompt(prompt, max_new_tokens=1)
    assert (len(rag.store), len(rag.index)) == (size, segments)


def test_llama_index_default_metadata_block_and_every_response_mode():
    """A stock RetrieverQueryEngine in each response mode: the LLM calls it makes (LlamaIndex's
    default templates over each node's metadata block and text) are served with the retrieved
    documents from the cache (the store's usage counters), and the store does not grow."""
    from llama_index.core import Settings
    from llama_index.core.query_engine import RetrieverQueryEngine

    from hypic_rag.store.usage import Usage
    from llama_index_hypic_rag import HypicRAGLLM, HypicRAGRetriever

    rag = demo_rag()
    previous = Settings._tokenizer
    Settings.tokenizer = rag.tokenizer.encode
    try:
        size = len(rag.store)
        name = demo_docs(12)[7]["title"]
        llm = HypicRAGLLM(rag=rag, max_new_tokens=4)
        for mode in ("compact", "refine", "tree_summarize", "simple_summarize"):
            before = Usage.read(rag.directory)
            engine = RetrieverQueryEngine.from_args(HypicRAGRetriever(rag=rag, k=2), llm=llm, response_mode=mode)
            assert engine.query(f"Where was {name} born?").response is not None, mode
            after = Usage.read(rag.directory)
            assert after.requests > before.requests, mode
            assert after.segment_misses == before.segment_misses, mode
            assert after.segment_hits - before.segment_hits >= 2, mode  # both retrieved nodes, from the cache
        assert len(rag.store) == size
    finally:
        Settings._tokenizer = previous
