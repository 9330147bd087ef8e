"""Open a HypicRAG from an injected instance or a store directory."""

from __future__ import annotations


def open_engine(rag, store_dir: str | None):
    if rag is not None:
        return rag
    if not store_dir:
        raise ValueError("pass rag=HypicRAG(...) or store_dir= (a directory built by `hypic-rag precompute`)")
    from hypic_rag.api import HypicRAG

    return HypicRAG.from_store(store_dir)
