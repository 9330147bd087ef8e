"""HypicRAGRetriever: top-k segments as NodeWithScore, node ids = segment ids."""

from __future__ import annotations

from typing import Any

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from llama_index_hypic_rag._engine import open_engine


class HypicRAGRetriever(BaseRetriever):
    """Top-k segments of a hypic_rag store as nodes (node ids = segment ids, text = the segment's exact
    prompt text, so the LLM's prompt is served from the cache). Each node's metadata["hypic_rag"] is
    filled with the cache figures of the request that answers from it, so they reach a stock query
    engine's Response.metadata."""

    def __init__(self, rag: Any = None, store_dir: str | None = None, k: int = 4, **kwargs: Any) -> None:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self._rag, self._store_dir, self.k = rag, store_dir, k
        super().__init__(**kwargs)

    def engine(self):
        """The HypicRAG retrieved from (opened from store_dir on first use)."""
        self._rag = open_engine(self._rag, self._store_dir)
        return self._rag

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        out, figures = [], []
        for hit in self.engine().retrieve(query_bundle.query_str, k=self.k):
            r = hit.record
            cache: dict = {}  # the figures of the request that answers from this node (Response.metadata)
            figures.append(cache)
            metadata = {"segment_id": r.segment_id, "doc_id": r.doc_id, "title": r.title, "rank": hit.rank,
                        "hypic_rag": cache}
            node = TextNode(id_=r.segment_id, text=r.text, metadata=metadata,
                            excluded_llm_metadata_keys=list(metadata),  # the LLM sees the exact segment text
                            excluded_embed_metadata_keys=list(metadata))
            out.append(NodeWithScore(node=node, score=hit.score))
        self.engine().note_retrieved([n.node.node_id for n in out],  # reported if found in no prompt
                                     on_answer=lambda found: [cache.update(found) for cache in figures])
        return out
