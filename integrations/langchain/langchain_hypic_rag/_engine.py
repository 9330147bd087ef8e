"""The shared part of every component: a HypicRAG, injected or opened lazily from store_dir."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class HypicEngineMixin(BaseModel):
    """`rag` (an open hypic_rag.HypicRAG) wins; otherwise `store_dir` is opened on first use."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store_dir: str | None = None
    rag: Any = Field(default=None, exclude=True)
    prompt_format: str = "store"  # the found documents and the prompt's question in the store's template
    top_p: float | None = None
    seed: int | None = None
    _opened: Any = PrivateAttr(default=None)

    def engine(self):
        """The HypicRAG: `rag` when given, else `store_dir` opened once."""
        if self.rag is not None:
            return self.rag
        if self._opened is None:
            if not self.store_dir:
                raise ValueError("pass rag=HypicRAG(...) or store_dir= (a directory built by `hypic-rag precompute`)")
            from hypic_rag.api import HypicRAG

            self._opened = HypicRAG.from_store(self.store_dir)
        return self._opened

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` by the store's own model tokenizer (no download; opens the store)."""
        return list(self.engine().tokenizer.encode(text, add_special_tokens=False))

    def checkpoint_name(self) -> str | None:
        """The model checkpoint's name (its directory, or its config's name), once the engine is open."""
        rag = self.rag if self.rag is not None else self._opened
        if rag is None:
            return None
        if getattr(rag, "model_path", None) is not None:
            return str(rag.model_path).rstrip("/").rsplit("/", 1)[-1]
        return getattr(rag.model.config, "name_or_path", None) or None


def usage_metadata(result) -> dict:
    """LangChain usage metadata of a QueryResult: prompt, output and total tokens, and the prompt
    tokens read from the cache."""
    gen = result.generation
    return {"input_tokens": gen.prompt_tokens, "output_tokens": len(gen.token_ids),
            "total_tokens": gen.prompt_tokens + len(gen.token_ids),
            "input_token_details": {"cache_read": gen.cached_tokens}}


def _stream_of(engine, asynchronous: bool, *, prompt, question, segment_ids, mode, max_new_tokens, temperature,
               stop, timeout, prompt_format="store", top_p=None, seed=None):
    options = engine.options(mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                             seed=seed, stop=stop or None)
    if segment_ids is not None:
        if not isinstance(segment_ids, (list, tuple)) or not all(isinstance(s, str) for s in segment_ids):
            raise ValueError("segment_ids must be a list of segment id strings")
        method = engine.astream if asynchronous else engine.stream
        return method(question, segment_ids=list(segment_ids), options=options, timeout=timeout)
    method = engine.astream_prompt if asynchronous else engine.stream_prompt
    return method(prompt, options=options, timeout=timeout, prompt_format=prompt_format)


def run_generation(engine, **request):
    """Yield (text_delta, None) pieces, then (None, QueryResult). Decoding ends at the first stop string
    (the engine stops there; the text excludes it and the finish reason is "stop"). The request runs
    on the engine's worker thread; closing this generator cancels it."""
    for item in _stream_of(engine, False, **request):
        yield (item, None) if isinstance(item, str) else (None, item)


async def arun_generation(engine, **request):
    """run_generation for asyncio (native: no thread holds the model while the loop waits)."""
    async for item in _stream_of(engine, True, **request):
        yield (item, None) if isinstance(item, str) else (None, item)


def retrieved_documents(engine, query: str, k: int) -> list:
    """The top-k segments for `query` as Documents: id and page_content the segment's (its exact
    prompt text, so a stuffing chain's prompt is served from the cache), metadata with the score,
    rank, document id and title; recorded as retrieved (a segment found in no prompt is reported)."""
    from langchain_core.documents import Document

    hits = engine.retrieve(query, k=k)
    engine.note_retrieved([h.record.segment_id for h in hits])
    return [Document(id=h.record.segment_id, page_content=h.record.text,
                     metadata={"segment_id": h.record.segment_id, "score": h.score, "rank": h.rank,
                               "doc_id": h.record.doc_id, "title": h.record.title, **h.record.metadata})
            for h in hits]
