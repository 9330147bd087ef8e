"""What the Python API hands back: one answered question, and a store's summary."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypic_rag.index.segment_index import RetrievedSegment
from hypic_rag.types import GenerationResult, Timings


def short(text: str | None, limit: int = 60) -> str:
    """repr of `text`, cut to `limit` characters with an ellipsis."""
    if text is None:
        return "None"
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


@dataclass(frozen=True, repr=False)
class QueryResult:
    """One answered question: the answer's first line, the segments it was answered from, the
    generation (text, token ids, cache counts, timings) and the retrieval time."""

    answer: str
    segments: list[RetrievedSegment]
    generation: GenerationResult
    retrieval_seconds: float
    tier_hits: dict[str, int] = field(default_factory=dict)

    @property
    def segment_ids(self) -> list[str]:
        """Ids of the segments the answer was composed from, in prompt order."""
        return [s.record.segment_id for s in self.segments]

    @property
    def timings(self) -> Timings:
        """Seconds per stage of the request (load, seam, prefill, ttft, decode)."""
        return self.generation.timings

    def __repr__(self) -> str:
        g = self.generation
        return (f"QueryResult(answer={short(self.answer)}, segments={self.segment_ids}, hits={g.segment_hits}, "
                f"misses={g.segment_misses}, cached_tokens={g.cached_tokens}/{g.prompt_tokens}, "
                f"ttft={self.timings.ttft * 1000:.1f} ms, finish_reason={g.finish_reason!r})")

    def to_dict(self) -> dict:
        """The result's cache and timing figures as plain JSON values (what the integrations report
        as response metadata)."""
        t = self.timings
        return {
            "segment_ids": self.segment_ids,
            "cached_tokens": self.generation.cached_tokens,
            "segment_hits": self.generation.segment_hits,
            "segment_misses": self.generation.segment_misses,
            "tier_hits": dict(self.tier_hits),
            "finish_reason": self.generation.finish_reason,
            "timings": {"ttft": t.ttft, "retrieval": self.retrieval_seconds, "load": t.load,
                        "precompute_misses": t.precompute_misses, "compose": t.compose, "seam": t.seam,
                        "prefill": t.prefill, "decode": t.decode},
        }


@dataclass(frozen=True)
class StoreInfo:
    """A store's summary: directory, fingerprint, model path, counts and per-tier statistics."""
    directory: str
    fingerprint: str
    model_path: str | None
    segments: int
    documents: int
    tiers: list
