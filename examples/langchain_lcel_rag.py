"""A LangChain LCEL RAG chain over a hypic_rag store.

The retriever returns segments whose page_content is their exact cached text; the chain stuffs them
into the prompt as usual, and ChatHypicRAG recognises them and composes their cached states instead
of prefilling them.

    python examples/langchain_lcel_rag.py [--store DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.cli.demo import DEMO_DIR
from langchain_hypic_rag import ChatHypicRAG, HypicRAGRetriever


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="store directory (default: a temporary one built from the demo corpus)")
    args = parser.parse_args()
    directory = args.store or tempfile.mkdtemp(prefix="hypic-lcel-")
    rag = HypicRAG.create(directory, model=SHIPPED_MODEL)
    rag.ingest([DEMO_DIR / "corpus.jsonl"])

    retriever = HypicRAGRetriever(rag=rag, k=3)
    chat = ChatHypicRAG(rag=rag, max_tokens=8)
    prompt = ChatPromptTemplate.from_template("{context}Question: {question}\nAnswer:")
    chain = (
        {"context": retriever | (lambda docs: "".join(d.page_content for d in docs)), "question": RunnablePassthrough()}
        | prompt
        | chat
    )
    name = rag.index.records()[0].title
    for question in (f"What is the home city of {name}?", f"What is the job of {name}?"):
        message = chain.invoke(question)
        meta = message.response_metadata
        print(f"Q: {question}\nA: {message.content.strip().splitlines()[0] if message.content.strip() else ''}")
        print(f"   cached segments {meta['segment_ids']}, TTFT {meta['timings']['ttft'] * 1000:.1f} ms, "
              f"cache-read tokens {message.usage_metadata['input_token_details']['cache_read']}")
    print("streamed:", "".join((chain | StrOutputParser()).stream(f"What does {name} like to eat?")).strip())
    rag.close()


if __name__ == "__main__":
    main()
