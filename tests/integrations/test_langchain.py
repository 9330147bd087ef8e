"""LangChain integration: the standard langchain-tests suites plus cache reuse through LCEL chains."""

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from conftest import demo_docs, demo_rag
from langchain_hypic_rag import ChatHypicRAG, HypicRAGLLM, HypicRAGRetriever


class TestChatHypicRAGUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatHypicRAG

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"store_dir": "/lazily/opened/store", "model": "hypic-rag-small"}


class TestHypicRAGRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return HypicRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"rag": demo_rag(), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return f"Where was {demo_docs(12)[0]['title']} born?"


def stuffing_chain(llm, retriever):
    prompt = ChatPromptTemplate.from_template("{context}Question: {question}\nAnswer:")

    def join(docs):
        return "".join(d.page_content for d in docs)

    return {"context": retriever | join, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()


def test_lcel_stuffing_chain_is_served_from_the_cache():
    rag = demo_rag()
    name = demo_docs(12)[4]["title"]
    chat = ChatHypicRAG(rag=rag, max_tokens=6)
    retriever = HypicRAGRetriever(rag=rag, k=3)
    answer = stuffing_chain(chat, retriever).invoke(f"Where was {name} born?")
    assert isinstance(answer, str)
    docs = retriever.invoke(f"Where was {name} born?")
    prompt = "".join(d.page_content for d in docs) + f"Question: Where was {name} born?\nAnswer:"
    message = chat.invoke([HumanMessage(prompt)])
    meta = message.response_metadata
    assert meta["segment_ids"] == [d.id for d in docs] and meta["segment_hits"] == 3
    assert meta["segment_misses"] == 0 and message.usage_metadata["input_token_details"]["cache_read"] > 0
    expected = rag.query(f"Where was {name} born?", segment_ids=[d.id for d in docs], max_new_tokens=6)
    assert message.content.split("\n")[0].strip() == expected.answer  # same tokens as the direct path


def test_explicit_segment_ids_via_bind_and_streaming():
    rag = demo_rag()
    ids = [f"{d['title']}#0" for d in demo_docs(12)[:2]]
    chat = ChatHypicRAG(rag=rag, max_tokens=5).bind(segment_ids=ids)
    chunks = list(chat.stream("What is the job of Kamo?"))
    assert len(chunks) >= 2 and chunks[-1].response_metadata["segment_ids"] == ids
    assert chunks[-1].usage_metadata["output_tokens"] >= 1
    with pytest.raises(ValueError, match="segment_ids must be a list"):
        ChatHypicRAG(rag=rag).invoke("q", segment_ids="Kamo#0")


def test_uncached_text_falls_back_to_prefill_and_stop_sequences():
    rag = demo_rag()
    chat = ChatHypicRAG(rag=rag, max_tokens=8)
    message = chat.invoke("Some text that is in no store.\nQuestion: what?\nAnswer:")
    assert message.response_metadata["segment_ids"] == []
    full = chat.invoke("Question: where?\nAnswer:").content
    assert len(full) > 2
    stopped = chat.invoke("Question: where?\nAnswer:", stop=[full[1:3]])
    assert stopped.content == full[: full.index(full[1:3])]
    assert stopped.response_metadata["finish_reason"] == "stop"  # decoding ended there, not at max_tokens


def test_plain_llm_wrapper_and_lazy_store_dir():
    rag = demo_rag()
    llm = HypicRAGLLM(store_dir=str(rag.directory), max_tokens=4)
    name = demo_docs(12)[1]["title"]
    text = stuffing_chain(llm, HypicRAGRetriever(rag=rag, k=2)).invoke(f"What does {name} like to eat?")
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="pass rag="):
        HypicRAGLLM().invoke("x")


def test_concurrent_ainvoke_then_astream_and_astream_events():
    """The reported sequence: four ainvoke at once, then astream (it raised 'cannot release un-acquired
    lock' and could hang), then astream_events; on a thread pool of eight."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from langchain_core.language_models import BaseLLM

    rag = demo_rag()
    prompt = f"Where was {demo_docs(12)[2]['title']} born?"
    chat, llm = ChatHypicRAG(rag=rag, max_tokens=6), HypicRAGLLM(rag=rag, max_tokens=6)

    async def main():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8))
        answers = await asyncio.gather(*[chat.ainvoke(prompt) for _ in range(4)])
        chunks = [c async for c in chat.astream(prompt)]
        events = [e async for e in chat.astream_events(prompt, version="v2")]
        texts = await asyncio.gather(*[llm.ainvoke(prompt) for _ in range(3)])
        pieces = [p async for p in llm.astream(prompt)]
        return answers, chunks, events, texts, pieces

    answers, chunks, events, texts, pieces = asyncio.run(asyncio.wait_for(main(), 180))
    assert len({a.content for a in answers}) == 1 and answers[0].content
    assert "".join(c.content for c in chunks) == answers[0].content
    streamed = [e["data"]["chunk"].content for e in events if e["event"] == "on_chat_model_stream"]
    assert "".join(streamed) == answers[0].content
    assert len(set(texts)) == 1 and "".join(pieces) == texts[0]
    assert ChatHypicRAG._astream is not BaseChatModel._astream and HypicRAGLLM._astream is not BaseLLM._astream


def test_token_counts_model_name_and_usage_come_from_the_store():
    """get_num_tokens / get_token_ids use the model's own tokenizer (no GPT-2 download); model_name is
    the checkpoint's; the plain LLM reports usage with the cached prompt tokens too."""
    rag = demo_rag()
    chat, llm = ChatHypicRAG(rag=rag, max_tokens=4), HypicRAGLLM(rag=rag, max_tokens=4)
    text = f"Where was {demo_docs(12)[1]['title']} born?"
    want = rag.tokenizer.encode(text, add_special_tokens=False)
    assert chat.get_token_ids(text) == want and llm.get_num_tokens(text) == len(want)
    message = chat.invoke(text)
    assert message.response_metadata["model_name"] == rag.model_path.name
    assert ChatHypicRAG(rag=rag, model="mine").invoke(text).response_metadata["model_name"] == "mine"
    info = llm.generate([text]).generations[0][0].generation_info
    usage = info["usage_metadata"]
    assert usage["input_tokens"] == message.usage_metadata["input_tokens"] > 0
    assert usage["input_token_details"]["cache_read"] == message.usage_metadata["input_token_details"]["cache_read"]
    assert info["model_name"] == rag.model_path.name


def test_chat_messages_go_through_the_tokenizers_chat_template_with_their_roles():
    from langchain_core.messages import AIMessage, SystemMessage

    rag = demo_rag()
    template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                "{% if add_generation_prompt %}<assistant>{% endif %}")
    messages = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello."),
                HumanMessage(f"Where was {demo_docs(12)[3]['title']} born?")]
    rendered = "<system>Be brief.\n<user>Hi\n<assistant>Hello.\n<user>" + messages[-1].content + "\n<assistant>"
    previous = rag.tokenizer.chat_template
    rag.tokenizer.chat_template = template
    try:
        got = ChatHypicRAG(rag=rag, max_tokens=5).invoke(messages)
    finally:
        rag.tokenizer.chat_template = previous
    want = rag.query_prompt(rendered, max_new_tokens=5)
    assert got.content == want.generation.text
    assert got.usage_metadata["input_tokens"] == want.generation.prompt_tokens


def test_seed_top_p_and_temperature_per_call_and_as_fields():
    rag = demo_rag()
    prompt = f"Where was {demo_docs(12)[4]['title']} born?"
    chat = ChatHypicRAG(rag=rag, max_tokens=8)
    hot = [chat.invoke(prompt, temperature=1.5, top_p=0.95, seed=s).content for s in (1, 1, 2, 3, 4)]
    assert hot[0] == hot[1] and len(set(hot)) > 1  # the seed fixes a sample; sampling makes them differ
    fixed = ChatHypicRAG(rag=rag, max_tokens=8, temperature=1.5, top_p=0.95, seed=1)
    assert fixed.invoke(prompt).content == hot[0]
    assert HypicRAGLLM(rag=rag, max_tokens=8, temperature=1.5, seed=3).invoke(prompt) == \
        HypicRAGLLM(rag=rag, max_tokens=8).invoke(prompt, temperature=1.5, seed=3)


def test_the_indexing_api_adds_skips_updates_and_deletes_documents(tmp_path):
    """langchain_core.indexing.index with a real RecordManager over HypicRAGVectorStore."""
    from langchain_core.documents import Document
    from langchain_core.indexing import InMemoryRecordManager, index

    from hypic_rag.api import SHIPPED_MODEL, HypicRAG
    from langchain_hypic_rag import HypicRAGVectorStore

    alice = "Alice Marrow was born in Lisbon. She works as a baker."
    bob = "Bob Kestrel was born in Oslo. He works as a pilot."
    with HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL) as rag:
        store, records = HypicRAGVectorStore(rag=rag), InMemoryRecordManager("hypic")
        records.create_schema()
        docs = [Document(alice, metadata={"source": "a"}), Document(bob, metadata={"source": "b"})]
        first = index(docs, records, store, cleanup="incremental", source_id_key="source")
        again = index(docs, records, store, cleanup="incremental", source_id_key="source")
        edited = [Document(alice.replace("Lisbon", "Porto"), metadata={"source": "a"}), docs[1]]
        update = index(edited, records, store, cleanup="incremental", source_id_key="source")
        assert (first["num_added"], again["num_skipped"]) == (2, 2)
        assert (update["num_added"], update["num_deleted"], update["num_skipped"]) == (1, 1, 1)
        texts = [r.text for r in rag.index.records()]
        assert len({r.doc_id for r in rag.index.records()}) == 2
        assert any("Porto" in t for t in texts) and not any("Lisbon" in t for t in texts)
        hit = store.similarity_search("Where was Alice Marrow born?", k=1)[0]
        assert "Porto" in hit.page_content and hit.metadata["source"] == "a"
        (got,) = store.get_by_ids([hit.metadata["doc_id"]])
        assert got.page_content.strip() == edited[0].page_content
        full = index([], records, store, cleanup="full")
        assert full["num_deleted"] == 2 and len(rag.index) == 0
