"""HypicRAGVectorStore: a hypic_rag store as a LangChain VectorStore.

Documents added here are segmented, precomputed into segment caches, embedded and indexed by the
store (its own embedder: no Embeddings object is needed); ids are document ids (given, or a hash of
the content), so LangChain's indexing API (`langchain_core.indexing.index` with a RecordManager)
can add, skip unchanged and delete documents, and an id added again with new text replaces its old
segments. Searches return segments (page_content is the segment's exact prompt text, as
HypicRAGRetriever's), so a chain built on `as_retriever()` is served from the cache.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from langchain_hypic_rag._engine import HypicEngineMixin, retrieved_documents


class HypicRAGVectorStore(VectorStore):
    """A hypic_rag store as a LangChain VectorStore (see the module docstring)."""
    def __init__(self, rag: Any = None, store_dir: str | None = None):
        self._engine = HypicEngineMixin(rag=rag, store_dir=store_dir)

    def engine(self):
        """The HypicRAG underneath (opened from store_dir on first use)."""
        return self._engine.engine()

    @property
    def embeddings(self) -> Embeddings | None:
        """None: the store embeds with its own embedder."""
        return None  # the store embeds with its own embedder

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, *, ids: list[str] | None = None,
                  **kwargs: Any) -> list[str]:
        """Ingest texts as documents (ids: the given ones, else content hashes); returns the ids."""
        texts = list(texts)
        metadatas = metadatas or [{} for _ in texts]
        ids = list(ids) if ids is not None else [None] * len(texts)
        if not (len(metadatas) == len(ids) == len(texts)):
            raise ValueError(f"{len(texts)} texts, {len(metadatas)} metadatas and {len(ids)} ids: give one each")
        items = []
        for text, metadata, doc_id in zip(texts, metadatas, ids):
            item = {"text": text, "metadata": dict(metadata)}
            if doc_id is not None:
                item["id"] = doc_id
            if "title" in metadata:
                item["title"] = str(metadata["title"])
            items.append(item)
        from hypic_rag.precompute.corpus import as_documents

        documents = as_documents(items)
        self.engine().ingest(documents)
        return [d.doc_id for d in documents]

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        """Ingest Documents (their ids when every one has an id, else content hashes)."""
        ids = kwargs.pop("ids", None) or ([d.id for d in documents] if all(d.id for d in documents) else None)
        return self.add_texts([d.page_content for d in documents], [d.metadata for d in documents], ids=ids, **kwargs)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Remove documents by id (their segments and unused cache entries)."""
        if not ids:
            return None
        self.engine().delete(list(ids))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Each known document: its segments' texts joined, in order."""
        rag, out = self.engine(), []
        for doc_id in ids:
            records = [rag.index.get(sid) for sid, _ in rag.index.document_segments(doc_id)]
            if records:
                body = "".join(rag.template.body_of(r.text, r.title) for r in records)
                out.append(Document(id=doc_id, page_content=body, metadata=dict(records[0].metadata)))
        return out

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """The top-k segments for `query` with their cosine scores."""
        return [(doc, doc.metadata["score"]) for doc in retrieved_documents(self.engine(), query, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The top-k segments for `query`."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _select_relevance_score_fn(self):
        return lambda score: (score + 1.0) / 2.0  # cosine (inner product of unit vectors) to [0, 1]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None, metadatas: list[dict] | None = None,
                   *, ids: list[str] | None = None, rag: Any = None, store_dir: str | None = None,
                   **kwargs: Any) -> "HypicRAGVectorStore":
        """A vector store over `rag` (or `store_dir`) with these texts ingested (`embedding` is unused)."""
        store = cls(rag=rag, store_dir=store_dir)
        store.add_texts(texts, metadatas, ids=ids)
        return store
