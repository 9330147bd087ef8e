"""HypicRAGRetriever: segments from a hypic_rag store as LangChain Documents."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_hypic_rag._engine import HypicEngineMixin


class HypicRAGRetriever(HypicEngineMixin, BaseRetriever):
    """Top-k segments; page_content is the segment's exact prompt text, so a stuffing chain's
    prompt is recognised by ChatHypicRAG and served from the cache. Accepts k per call."""

    k: int = 4

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        k = kwargs.get("k", self.k)
        hits = self.engine().retrieve(query, k=k)
        self.engine().note_retrieved([h.record.segment_id for h in hits])
        return [
            Document(
                id=h.record.segment_id,
                page_content=h.record.text,
                metadata={"segment_id": h.record.segment_id, "score": h.score, "rank": h.rank,
                          "doc_id": h.record.doc_id, "title": h.record.title, **h.record.metadata},
            )
            for h in hits
        ]
