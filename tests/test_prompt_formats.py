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


LANGCHAIN_RAG_PROMPT = (  # the hub's rlm/rag-prompt: the question before the context
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved context to "
    "answer the question. If you don't know the answer, just say that you don't know. Use three sentences "
    "maximum and keep the answer concise.\nQuestion: {question} \nContext: {context} \nAnswer:")


def test_stock_prompts_answer_as_the_store_template_does():
    """LlamaIndex's default QA prompt and LangChain's common RAG prompt, sent through the integrations
    (prompt_format "store", their default), give the model what it answers from the store's own
    template: the same answer as a query naming the same segments."""
    from langchain_core.prompts import ChatPromptTemplate
    from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT

    from langchain_hypic_rag import ChatHypicRAG
    from llama_index_hypic_rag import HypicRAGLLM

    rag = demo_rag()
    chat, llm = ChatHypicRAG(rag=rag, max_tokens=6), HypicRAGLLM(rag=rag, max_new_tokens=6)
    for doc in demo_docs(12)[:4]:
        question = f"What is the home city of {doc['title']}?"
        records = [s.record for s in rag.retrieve(question, k=3)]
        want = rag.query(question, segment_ids=[r.segment_id for r in records], max_new_tokens=6).generation.text
        context = "\n\n".join(r.text for r in records)
        llama = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=question)).text
        lang = ChatPromptTemplate.from_template(LANGCHAIN_RAG_PROMPT).invoke(
            {"question": question, "context": context})
        assert llama == want and chat.invoke(lang).content == want, (question, llama, want)
        verbatim = llm.complete(DEFAULT_TEXT_QA_PROMPT.format(context_str=context, query_str=question),
                                prompt_format="as_is")
        assert verbatim.raw["segment_hits"] == len(records)  # as_is: the same cache hits, the prompt verbatim


def test_a_retrieved_document_found_in_no_prompt_is_reported_once(caplog):
    """hits + misses + not-in-prompt account for every retrieved document."""
    import logging

    from langchain_hypic_rag import ChatHypicRAG, HypicRAGRetriever

    from hypic_rag import metrics

    rag = demo_rag()
    store = str(rag.directory)
    rag.retrievals.settle(older_than=0)
    before = metrics.NOT_IN_PROMPT.labels(store)._value.get()
    retriever, chat = HypicRAGRetriever(rag=rag, k=3), ChatHypicRAG(rag=rag, max_tokens=2)
    question = f"Where was {demo_docs(12)[8]['title']} born?"
    docs = retriever.invoke(question)
    kept = "".join(d.page_content for d in docs[:2])  # a chain that drops the third document
    message = chat.invoke(kept + f"Question: {question}\nAnswer:")
    docs = retriever.invoke(question)
    chat.invoke("".join(d.page_content for d in docs) + f"Question: {question}\nAnswer:")  # all three used
    with caplog.at_level(logging.WARNING, logger="hypic_rag"):
        rag.retrievals.settle(older_than=0)
        rag.retrievals.retrieved(["x"])  # nothing more to report, and no second warning
        rag.retrievals.settle(older_than=0)
    dropped = metrics.NOT_IN_PROMPT.labels(store)._value.get() - before
    assert message.response_metadata["segment_hits"] + message.response_metadata["segment_misses"] + dropped == 3
    assert dropped == 1 and sum("found in no prompt" in r.message for r in caplog.records) <= 1
