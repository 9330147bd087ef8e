"""LangChain integration for hypic_rag."""

from langchain_hypic_rag.chat_models import ChatHypicRAG
from langchain_hypic_rag.llms import HypicRAGLLM
from langchain_hypic_rag.retrievers import HypicRAGRetriever
from langchain_hypic_rag.vectorstores import HypicRAGVectorStore

__all__ = ["ChatHypicRAG", "HypicRAGLLM", "HypicRAGRetriever", "HypicRAGVectorStore"]
