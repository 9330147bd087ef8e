"""The shared part of every component: a HypicRAG, injected or opened lazily from store_dir."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


class HypicEngineMixin(BaseModel):
    """`rag` (an open hypic_rag.HypicRAG) wins; otherwise `store_dir` is opened on first use."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store_dir: str | None = None
    rag: Any = Field(default=None, exclude=True)
    _opened: Any = PrivateAttr(default=None)

    def engine(self):
        if self.rag is not None:
            return self.rag
        if self._opened is None:
            if not self.store_dir:
                raise ValueError("pass rag=HypicRAG(...) or store_dir= (a directory built by `hypic-rag precompute`)")
            from hypic_rag.api import HypicRAG

            self._opened = HypicRAG.from_store(self.store_dir)
        return self._opened


def run_generation(engine, *, prompt: str | None, question: str | None, segment_ids: list[str] | None,
                   mode: str | None, max_new_tokens: int | None, temperature: float | None, stop: list[str] | None):
    """Yield (text_delta, None) pieces, then (None, QueryResult). Cuts the text at the first stop string."""
    if segment_ids is not None:
        if not isinstance(segment_ids, (list, tuple)) or not all(isinstance(s, str) for s in segment_ids):
            raise ValueError("segment_ids must be a list of segment id strings")
        items = engine.stream(question, segment_ids=list(segment_ids), mode=mode, max_new_tokens=max_new_tokens,
                              temperature=temperature)
    else:
        items = engine.stream_prompt(prompt, mode=mode, max_new_tokens=max_new_tokens, temperature=temperature)
    emitted = ""
    text = ""
    for item in items:
        if not isinstance(item, str):
            yield None, item
            return
        text += item
        cut = min((text.find(s) for s in (stop or []) if s and s in text), default=-1)
        visible = text if cut < 0 else text[:cut]
        if len(visible) > len(emitted):
            yield visible[len(emitted):], None
            emitted = visible
        if cut >= 0:
            for rest in items:  # drain to the final result; the stop string ends the visible text
                if not isinstance(rest, str):
                    yield None, rest
                    return
