"""Splicing cached segments into a request's DynamicCache, for each cached mode of the ladder.

For segment i at offset o (tokens before it), in request order:
  hypic             : 1. run its first w tokens through every layer with the true context
                         (linear layers start from the composed state and the previous conv tail,
                         or the shared prefix's for i = 0, which makes segment 0 exact;
                         attention sees all earlier K/V at real positions);
                      2. advance each linear state over the interior: S <- M S + E;
                      3. conv state <- the segment's tail (fresh seam columns where the interior < K);
                      4. append the interior K/V with keys rotated to their real positions.
  pic_transition_rope: S <- M S + E over the whole segment, tail, keys rotated to o.
  pic_transition    : the same with keys left where precompute put them (no RoPE fix).
  pic_addition      : S <- S + E (no operator), tail, keys left unrotated.
  hypic_adaptive    : hypic, then fresh K/V for the cached tokens the question reads most, within a
                      token budget (executor/adaptive_recompute.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from hypic_rag.config import Mode
from hypic_rag.errors import RequestError
from hypic_rag.executor import cache_ops
from hypic_rag.executor.adaptive_recompute import AdaptivePlan, recompute_read_tokens
from hypic_rag.executor.clock import clock
from hypic_rag.executor.prefix_anchor import prefix_anchor
from hypic_rag.executor.seam_pass import _key_positions, batched_seam_pass, supports_batched_seams
from hypic_rag.models.specs import ModelSpec
from hypic_rag.ops.compose import compose_state, merge_conv_tail
from hypic_rag.ops.rope import shift_keys_per_token
from hypic_rag.types import SegmentEntry


@dataclass(frozen=True)
class ComposeReport:
    compose_seconds: float
    seam_seconds: float
    recomputed_tokens: int
    end_offset: int
    question_logits: torch.Tensor | None = None  # set when the question rode in the seam pass
    plan: AdaptivePlan | None = None  # hypic_adaptive: what the request recomputed


def _append_segment_kv(
    cache: DynamicCache, spec: ModelSpec, rotary_emb, entry: SegmentEntry, start: int, shift: int
) -> None:
    _append_segments_kv(cache, spec, rotary_emb, [(entry, start, shift)])


def _append_segments_kv(
    cache: DynamicCache, spec: ModelSpec, rotary_emb, pieces: list[tuple[SegmentEntry, int, int]]
) -> None:
    """Append entry K/V from token `start` on, keys rotated by `shift`, for every (entry, start, shift)
    in order: one rotation and one append per layer for all of them (each append copies the layer's
    whole cache, so appending segment by segment would be quadratic in the number of segments)."""
    pieces = [(e, start, shift) for e, start, shift in pieces if e.length > start]
    if not pieces:
        return
    shifts = torch.cat([torch.full((e.length - start,), shift, dtype=torch.long) for e, start, shift in pieces])
    for j, layer in enumerate(spec.attention):
        pair = {"keys": torch.cat([e.attention[j].keys[:, start:] for e, start, _ in pieces], dim=1)[None],
                "values": torch.cat([e.attention[j].values[:, start:] for e, start, _ in pieces], dim=1)[None]}
        if layer.rope is not None and rotary_emb is not None and bool(shifts.any()):
            pair[layer.rope.tensor] = shift_keys_per_token(pair[layer.rope.tensor], rotary_emb, shifts)
        cache_ops.append_kv(cache, layer.layer_idx, pair["keys"], pair["values"])


def _fill_missing_prefix_state(cache: DynamicCache, anchor: SegmentEntry) -> None:
    """Zeros where the shared prefix left a linear layer no state (an empty prefix); the rest is the
    prefix's own already."""
    for layer in anchor.linear:
        if layer.end_state is not None and cache_ops.recurrent_state(cache, layer.layer_idx) is None:
            cache_ops.set_recurrent_state(cache, layer.layer_idx, layer.end_state[None])
        if layer.conv_tail is not None and cache_ops.conv_state(cache, layer.layer_idx) is None:
            cache_ops.set_conv_state(cache, layer.layer_idx, layer.conv_tail[None])


def _advance_interior(cache: DynamicCache, entry: SegmentEntry, use_operator: bool, fresh_seam: bool) -> None:
    for layer in entry.linear:
        if layer.interior_state is not None:
            current = cache_ops.recurrent_state(cache, layer.layer_idx)
            end = layer.interior_state[None]
            state = torch.zeros_like(end) if current is None else current
            operator = layer.interior_operator[None] if use_operator else None
            cache_ops.set_recurrent_state(cache, layer.layer_idx, compose_state(state, operator, end))
        if layer.conv_tail is None:  # a mixer with no conv (lightning attention)
            continue
        tail = layer.conv_tail[None]
        if fresh_seam:
            tail = merge_conv_tail(cache_ops.conv_state(cache, layer.layer_idx), tail, entry.interior_length)
        cache_ops.set_conv_state(cache, layer.layer_idx, tail)


@torch.no_grad()
def compose_segments(
    model: torch.nn.Module,
    spec: ModelSpec,
    rotary_emb,
    cache: DynamicCache,
    entries: list[SegmentEntry],
    mode: Mode,
    prefix_length: int,
    mixers: dict | None = None,
    batched_seams: bool = False,
    question: list[int] | None = None,
    recompute_budget: float = 0.0,
    keep_question: bool = True,
) -> ComposeReport:
    """Extend `cache` (holding the shared prefix) with `entries` in order; returns timings and the end offset.

    With batched_seams (hypic on a Gated DeltaNet or Mamba2 hybrid, see seam_pass.py) every seam is
    recomputed in one layer-major forward instead of one forward per segment; a `question` given here
    then rides in that same forward and the report carries its next-token logits (otherwise the
    caller prefills the question itself). recompute_budget: hypic_adaptive's share of the segments'
    tokens recomputed, seams included; its request needs the question, and keep_question=False
    leaves the cache before the question again (with the adaptive rung's K/V; for diagnose)."""
    device = next(model.parameters()).device
    rung = mode.rung
    if rung.adaptive:
        if not (batched_seams and mixers is not None and supports_batched_seams(model, spec)):
            raise RequestError(f"{mode.value} builds on the one-pass seam recompute, which this model "
                               "or setting does not run: use mode 'hypic', or batched_seams=True on a supported hybrid")
        return _compose_with_one_seam_pass(model, spec, rotary_emb, cache, entries, prefix_length, mixers, question,
                                           recompute_budget, keep_question)
    if (rung.seams and batched_seams and mixers is not None and sum(e.seam_tokens for e in entries) > 1
            and supports_batched_seams(model, spec)):
        return _compose_with_one_seam_pass(model, spec, rotary_emb, cache, entries, prefix_length, mixers, question)
    offset = prefix_length
    seam_seconds = 0.0
    recomputed = 0
    pending: list[tuple[SegmentEntry, int, int]] = []  # the PIC rungs' K/V, appended together at the end
    started = clock(device)
    for entry in entries:
        if rung.seams:
            seam = entry.seam_tokens
            if seam > 0:
                t0 = clock(device)
                ids = torch.tensor([entry.token_ids[:seam]], dtype=torch.long, device=device)
                positions = torch.arange(offset, offset + seam, device=device)[None]
                model.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)
                seam_seconds += clock(device) - t0
                recomputed += seam
            if entry.interior_length > 0:
                _advance_interior(cache, entry, use_operator=True, fresh_seam=seam > 0)
                _append_segment_kv(cache, spec, rotary_emb, entry, seam, offset)
        else:
            if entry.seam_tokens != 0:
                raise RequestError(f"{mode.value} composes whole segments; this entry was built with a seam of "
                                 f"{entry.seam_tokens} tokens. Build entries with seam_tokens=0 for this mode.")
            _advance_interior(cache, entry, use_operator=rung.operator, fresh_seam=False)
            pending.append((entry, 0, offset if rung.rotate_keys else prefix_length))
        offset += entry.length
    _append_segments_kv(cache, spec, rotary_emb, pending)  # no forward reads them before the question
    total = clock(device) - started
    return ComposeReport(
        compose_seconds=total - seam_seconds, seam_seconds=seam_seconds, recomputed_tokens=recomputed, end_offset=offset
    )


def _compose_with_one_seam_pass(model, spec, rotary_emb, cache, entries, prefix_length, mixers, question,
                                budget: float | None = None, keep_question: bool = True) -> ComposeReport:
    """budget (hypic_adaptive, with a question and attention layers): after the seams, recompute the
    K/V the question reads most within it (executor/adaptive_recompute.py)."""
    device = next(model.parameters()).device
    started = clock(device)
    unbatched = lambda t: None if t is None else t[0]  # noqa: E731
    anchor = prefix_anchor(entries, lambda i: unbatched(cache_ops.recurrent_state(cache, i)),
                           lambda i: unbatched(cache_ops.conv_state(cache, i)))
    entries = [anchor, *entries]  # the seam pass chains every seam, segment 0's too, from the prefix
    _fill_missing_prefix_state(cache, anchor)
    pieces, offset = [(entries[0], 0, prefix_length)], prefix_length + entries[0].length
    for entry in entries[1:]:  # every interior's K/V first: seams attend to the interiors before them
        pieces.append((entry, entry.seam_tokens, offset))
        offset += entry.length
    _append_segments_kv(cache, spec, rotary_emb, pieces)
    adaptive = budget is not None and bool(question) and bool(spec.attention)
    t0 = clock(device)
    result = batched_seam_pass(model, spec, cache, entries, prefix_length, mixers, None if adaptive else question)
    seam_seconds = clock(device) - t0
    last = entries[-1]
    if result.logits is None and last.interior_length > 0:  # no question crossed it
        _advance_interior(cache, last, use_operator=True, fresh_seam=last.seam_tokens > 0)
    logits, plan, recomputed = result.logits, None, result.seam_tokens
    if adaptive:
        t0 = clock(device)
        keys, seams = _key_positions(entries, prefix_length)
        logits, plan = recompute_read_tokens(model, spec, cache, mixers, entries, prefix_length, keys, seams,
                                             question, budget, keep_question)
        seam_seconds += clock(device) - t0
        recomputed = plan.recomputed_tokens
    total = clock(device) - started
    return ComposeReport(compose_seconds=total - seam_seconds, seam_seconds=seam_seconds,
                         recomputed_tokens=recomputed, end_offset=offset, question_logits=logits, plan=plan)
