"""HypicQueryEngine: retrieve, then hand the segment ids (not their text) to the executor."""

from __future__ import annotations

from llama_index.core.base.response.schema import Response
from llama_index.core.query_engine import CustomQueryEngine
from pydantic import ConfigDict

from llama_index_hypic_rag.retriever import HypicRAGRetriever


class HypicQueryEngine(CustomQueryEngine):
    """Retrieve, then answer from the retrieved segments' caches by id (no text matching); the
    Response's metadata carries the cache and timing figures."""
    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: HypicRAGRetriever
    max_new_tokens: int = 64
    mode: str | None = None

    def custom_query(self, query_str: str) -> Response:
        """Answer `query_str` from its retrieved segments."""
        nodes = self.retriever.retrieve(query_str)
        result = self.retriever.engine().query(
            query_str, segment_ids=[n.node.node_id for n in nodes], mode=self.mode, max_new_tokens=self.max_new_tokens
        )
        return Response(response=result.answer, source_nodes=nodes, metadata=result.to_dict())
