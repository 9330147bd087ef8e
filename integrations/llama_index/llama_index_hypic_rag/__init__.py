"""LlamaIndex integration for hypic_rag."""

from llama_index_hypic_rag.llm import HypicRAGLLM
from llama_index_hypic_rag.query_engine import HypicQueryEngine
from llama_index_hypic_rag.retriever import HypicRAGRetriever
from llama_index_hypic_rag.vector_store import HypicRAGEmbedding, HypicRAGVectorStore

__all__ = ["HypicQueryEngine", "HypicRAGEmbedding", "HypicRAGLLM", "HypicRAGRetriever", "HypicRAGVectorStore"]
