"""LlamaIndex over a hypic_rag store: the segment-id query engine and a stock RetrieverQueryEngine.

    python examples/llama_index_query.py [--store DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from llama_index.core import Settings
from llama_index.core.query_engine import RetrieverQueryEngine

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.cli.demo import DEMO_DIR
from llama_index_hypic_rag import HypicQueryEngine, HypicRAGLLM, HypicRAGRetriever


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store")
    args = parser.parse_args()
    rag = HypicRAG.create(args.store or tempfile.mkdtemp(prefix="hypic-llama-"), model=SHIPPED_MODEL)
    rag.ingest([DEMO_DIR / "corpus.jsonl"])
    Settings.tokenizer = rag.tokenizer.encode  # count tokens with the model's tokenizer (no download)

    retriever = HypicRAGRetriever(rag=rag, k=3)
    name = rag.index.records()[1].title
    question = f"What is the home city of {name}?"

    response = HypicQueryEngine(retriever=retriever, max_new_tokens=8).query(question)
    print(f"Q: {question}\nA (segment ids passed): {response.response}")
    print(f"   sources {[n.node.node_id for n in response.source_nodes]}, TTFT {response.metadata['timings']['ttft'] * 1000:.1f} ms")

    stuffed = RetrieverQueryEngine.from_args(retriever, llm=HypicRAGLLM(rag=rag, max_new_tokens=8))
    print(f"A (stock RetrieverQueryEngine, text stuffed): {stuffed.query(question).response.strip()!r}")
    rag.close()


if __name__ == "__main__":
    main()
