"""Typed values that cross module boundaries: cached segment entries and request results."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class LinearLayerEntry:
    """One linear layer's cache for one segment (batch dim dropped).

    end_state: the state after the whole segment as computed at precompute time (exact when the
        segment is first in a request), fp32; None for conv-only layers.
    interior_state / interior_operator: E and M over the interior [seam, L); None when the interior
        is empty or the layer has no recurrent state.
    conv_tail: the last K pre-conv input columns of the segment, [channels, K]; None for a mixer with
        no conv (lightning attention).
    """

    layer_idx: int
    end_state: torch.Tensor | None
    interior_state: torch.Tensor | None
    interior_operator: torch.Tensor | None
    conv_tail: torch.Tensor | None


@dataclass(frozen=True)
class AttentionLayerEntry:
    """One attention layer's K/V for one segment, [kv_heads, L, head_dim], keys rotated to start at position 0."""

    layer_idx: int
    keys: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class SegmentEntry:
    """Everything needed to splice one segment into a request without running it again."""

    token_ids: tuple[int, ...]
    seam_tokens: int
    fingerprint: str
    linear: tuple[LinearLayerEntry, ...]
    attention: tuple[AttentionLayerEntry, ...]

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def interior_length(self) -> int:
        return max(self.length - self.seam_tokens, 0)

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.linear:
            for t in (layer.end_state, layer.interior_state, layer.interior_operator, layer.conv_tail):
                if t is not None:
                    total += t.numel() * t.element_size()
        for layer in self.attention:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
        return total


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each stage of one request; ttft is request start to first generated token.

    With hypic's one seam pass the question rides in the seam forward: its time is in `seam` and
    `prefill` is 0."""

    load: float = 0.0
    precompute_misses: float = 0.0
    compose: float = 0.0
    seam: float = 0.0
    prefill: float = 0.0
    ttft: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.ttft + self.decode


@dataclass(frozen=True)
class GenerationResult:
    """What one request produced."""

    def __repr__(self) -> str:
        text = self.text if self.text is None or len(self.text) <= 60 else self.text[:59] + "…"
        return (f"GenerationResult(text={text!r}, tokens={len(self.token_ids)}, finish_reason={self.finish_reason!r}, "
                f"prompt_tokens={self.prompt_tokens}, cached_tokens={self.cached_tokens}, hits={self.segment_hits}, "
                f"misses={self.segment_misses}, ttft={self.timings.ttft * 1000:.1f} ms)")

    token_ids: tuple[int, ...]
    text: str | None
    finish_reason: str  # "eos" or "length"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose cache was reused rather than recomputed
    segment_hits: int
    segment_misses: int
    timings: Timings
    first_token_logits: torch.Tensor | None = field(default=None, repr=False)
