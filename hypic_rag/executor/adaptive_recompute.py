"""hypic_adaptive: the seam of every segment, then more recompute where a probe says it pays, within a
token budget.

A cached segment's interior was computed without the segments before it. The fixed seam refreshes
its first w tokens; this rung spends what the budget leaves after the seams on extending some seams
further, [w, w + x_i), chosen per request:

  - probe: how much of segment i's interior depends on what came before it. With the linear states
    chained cheaply through the cached operators (S <- M S + E, seams ignored), the context's share
    of the state at the interior's end, |M_i S_in| / (|M_i S_in| + |E_i|), averaged over the linear
    layers. A segment whose layers forget their start quickly scores near 0; one that carries the
    context through scores near 1. Segment 0 follows only the shared prefix its entry was built
    after, so it is exact and never extended.
    Trained models forget fast: over a whole interior the operators fall to ~1e-18 (a model trained
    without block masks) or underflow to 0 in fp32 (the shipped model, on most documents). Where
    every later segment scores 0 the probe has nothing to say and each gets the same score.
  - allocation: the extension budget goes out in steps of `step` tokens, each to the segment with
    the highest score / (1 + steps it holds already), never past a segment's end.
  - recompute: an extended segment is laid out as two seams, [0, w) whose end state the chain
    carries on, and the extension [w, w + x_i), a branch: it runs from the true state at w and its
    fresh K/V and outputs replace the cached ones, but its end state is dropped and the interior
    [w, L) advances the state at w with the cached operator, exactly as the fixed seam does (the
    entry holds E, M for [w, L) only). Everything rides in hypic's one seam pass with the question.

So the linear states a request ends with are those of the fixed seam whenever only the last
segment is extended, and an extension that covers a whole segment gives that segment's attention
K/V as full recompute has them (tests/test_adaptive_recompute.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from hypic_rag.ops.compose import compose_state
from hypic_rag.ops.rope import shift_keys_per_token
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry

STEP_TOKENS = 4  # extensions grow in steps of this many tokens


@dataclass(frozen=True)
class AdaptivePlan:
    """What one request recomputes: per segment the seam w and the extension beyond it."""

    seams: tuple[int, ...]
    extensions: tuple[int, ...]
    scores: tuple[float, ...]
    budget_tokens: int  # the request's whole recompute budget (seams included)

    @property
    def recomputed_tokens(self) -> int:
        return sum(self.seams) + sum(self.extensions)


def context_scores(entries: list[SegmentEntry], start_state) -> list[float]:
    """The probe: per entry, the context's share of the state at its interior's end (0 for entry 0)
    averaged over the linear layers with a state. start_state(layer) -> the state before entry 0
    (batch dimension dropped, None where there is none)."""
    states = {}
    for layer in entries[0].linear:
        if layer.interior_state is not None:
            start = start_state(layer.layer_idx)
            states[layer.layer_idx] = torch.zeros_like(layer.interior_state, dtype=torch.float32) if start is None \
                else start.float()
    scores = []
    for i, entry in enumerate(entries):
        shares = []
        for layer in entry.linear:
            if layer.interior_state is None or layer.layer_idx not in states:
                continue
            carried = compose_state(states[layer.layer_idx], layer.interior_operator, torch.zeros_like(
                layer.interior_state, dtype=torch.float32))
            context, own = carried.norm().item(), layer.interior_state.float().norm().item()
            shares.append(context / (context + own) if context + own > 0 else 0.0)
            states[layer.layer_idx] = carried + layer.interior_state.float()
        scores.append(0.0 if i == 0 or not shares else sum(shares) / len(shares))
    return scores


def plan_extensions(entries: list[SegmentEntry], scores: list[float], budget: float,
                    step: int = STEP_TOKENS) -> AdaptivePlan:
    """Seams as built, then the extension budget (budget x the segments' tokens, less the seams) in
    steps of `step` tokens to the highest score / (1 + steps held), within each interior."""
    if len(scores) > 1 and not any(scores[1:]):  # no signal (operators underflowed): share alike
        scores = [scores[0]] + [1.0] * (len(scores) - 1)
    seams = [min(e.seam_tokens, e.length) for e in entries]
    total = int(budget * sum(e.length for e in entries))
    left = total - sum(seams)
    extensions = [0] * len(entries)
    while left > 0:
        best, best_value = None, 0.0
        for i, (entry, score) in enumerate(zip(entries, scores)):
            room = entry.interior_length - extensions[i]
            value = score / (1 + extensions[i] / step)
            if room > 0 and score > 0 and value > best_value:
                best, best_value = i, value
        if best is None:
            break
        grant = min(step, left, entries[best].interior_length - extensions[best])
        extensions[best] += grant
        left -= grant
    return AdaptivePlan(seams=tuple(seams), extensions=tuple(extensions), scores=tuple(scores), budget_tokens=total)


def _unshifted(entry: SegmentEntry, start: int, spec, rotary_emb) -> tuple[AttentionLayerEntry, ...]:
    """The entry's K/V from token `start` on, keys rotated back so token `start` sits at position 0."""
    layers = []
    for j, layer in enumerate(spec.attention):
        cached = entry.attention[j]
        keys, values = cached.keys[:, start:], cached.values[:, start:]
        if layer.rope is not None and rotary_emb is not None and start:
            shifts = torch.full((keys.shape[-2],), -start, dtype=torch.long)
            pair = {"keys": keys[None], "values": values[None]}
            pair[layer.rope.tensor] = shift_keys_per_token(pair[layer.rope.tensor], rotary_emb, shifts)
            keys, values = pair["keys"][0], pair["values"][0]
        layers.append(AttentionLayerEntry(cached.layer_idx, keys, values))
    return tuple(layers)


def split_entries(entries: list[SegmentEntry], plan: AdaptivePlan, spec,
                  rotary_emb) -> tuple[list[SegmentEntry], frozenset[int]]:
    """The request laid out for the seam pass: an extended segment becomes its seam [0, w) (no
    interior) and a branch [w, L) whose seam is the extension and whose interior keeps the entry's
    [w, L) operators; returns the entries and the indices of the branches among them."""
    out: list[SegmentEntry] = []
    branches = set()
    for entry, seam, extension in zip(entries, plan.seams, plan.extensions):
        if extension == 0:
            out.append(entry)
            continue
        if seam > 0:
            head = [LinearLayerEntry(l.layer_idx, None, None, None, l.conv_tail) for l in entry.linear]
            out.append(replace(entry, token_ids=entry.token_ids[:seam], seam_tokens=seam, linear=tuple(head),
                               attention=tuple(AttentionLayerEntry(a.layer_idx, a.keys[:, :seam], a.values[:, :seam])
                                               for a in entry.attention)))
        branches.add(len(out))
        out.append(replace(entry, token_ids=entry.token_ids[seam:], seam_tokens=extension,
                           attention=_unshifted(entry, seam, spec, rotary_emb)))
    return out, frozenset(branches)
