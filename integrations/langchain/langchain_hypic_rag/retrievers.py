"""HypicRAGRetriever: segments from a hypic_rag store as LangChain Documents."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_hypic_rag._engine import HypicEngineMixin, retrieved_documents


class HypicRAGRetriever(HypicEngineMixin, BaseRetriever):
    """Top-k segments; page_content is the segment's exact prompt text, so a stuffing chain's
    prompt is recognised by ChatHypicRAG and served from the cache. Accepts k per call."""

    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        return retrieved_documents(self.engine(), query, kwargs.get("k", self.k))
