"""hypic_adaptive's spans and the question in one forward.

adaptive_recompute.patch_spans is the plain reference: one forward per span, each over a fresh
cache holding the K/V before it, then the question in another. On a request of many documents the
budget buys dozens of spans, and a forward per span costs its launches (and on the CPU its Python).
Here the spans and the question are one sequence through the model, as the seam pass does it:
  - linear layers: every span starts from a zero state and conv window and leaves no state behind
    (seam_pass's `restarts`); the question, last, starts from the cache's state as before;
  - attention: the cache holds the request's K/V rows (`key_positions`: each row's position). A span
    token at position t of span [a, b) sees the rows of positions < a and its own span's fresh
    rows up to t, as it would alone. A question token sees every cached row except the patched
    positions', the fresh rows of the patched positions instead, and the question up to itself;
  - afterwards the cache's rows are compacted: the patched positions' rows replaced by their
    fresh ones, the other span rows dropped, the question's rows kept after them.
The result equals patch_spans followed by the question up to float reordering (tests compare them).
"""

from __future__ import annotations

import torch

from hypic_rag.executor import cache_ops
from hypic_rag.executor.seam_pass import _split_at_seams, layer_masks
from hypic_rag.models.specs import ModelSpec
from hypic_rag.types import SegmentEntry


def rows_by_position(key_positions: torch.Tensor) -> torch.Tensor:
    """[max position + 1]: the cache row holding each position (key_positions: each row's position)."""
    row_of = torch.full((int(key_positions.max()) + 1,), -1, dtype=torch.long)
    row_of[key_positions] = torch.arange(len(key_positions))
    return row_of


def _mask(key_positions: torch.Tensor, spans, patched_rows: torch.Tensor, fresh_rows: torch.Tensor,
          question_tokens: int) -> torch.Tensor:
    """[queries, cached rows + queries] visibility, queries = the spans' tokens then the question's."""
    span_tokens = sum(b - a for a, b in spans)
    queries = span_tokens + question_tokens
    old = torch.zeros(queries, len(key_positions), dtype=torch.bool)
    new = torch.zeros(queries, queries, dtype=torch.bool)
    row = 0
    for a, b in spans:
        old[row: row + b - a] = key_positions < a
        new[row: row + b - a, row: row + b - a] = torch.ones(b - a, b - a, dtype=torch.bool).tril()
        row += b - a
    old[row:] = True
    old[row:, patched_rows] = False
    new[row:, fresh_rows] = True
    new[row:, row:] = torch.ones(question_tokens, question_tokens, dtype=torch.bool).tril()
    return torch.cat([old, new], dim=1)


@torch.no_grad()
def spans_then_question(model: torch.nn.Module, spec: ModelSpec, cache, mixers, key_positions: torch.Tensor,
                        token_at: list[int], spans, patched, question: list[int], start: int) -> torch.Tensor:
    """Run the spans (from zero states) and the question (at `start`, from the cache's states) in one
    forward; the patched positions' K/V in `cache` become the spans'. Returns the question's
    next-token logits."""
    device = next(model.parameters()).device
    row_of = rows_by_position(key_positions)
    span_positions = [t for a, b in spans for t in range(a, b)]
    picked = set(patched)
    fresh_rows = torch.tensor([i for i, t in enumerate(span_positions) if t in picked], dtype=torch.long)
    patched_rows = row_of[torch.tensor([span_positions[i] for i in fresh_rows.tolist()], dtype=torch.long)]
    visible = _mask(key_positions, spans, patched_rows, fresh_rows, len(question)).to(device)
    ids = torch.tensor([[token_at[t] for t in span_positions] + list(question)], device=device)
    positions = torch.tensor([span_positions + list(range(start, start + len(question)))], device=device)
    entries = [SegmentEntry(token_ids=(), seam_tokens=0, fingerprint="", linear=(), attention=())] + [
        SegmentEntry(token_ids=tuple(token_at[a:b]), seam_tokens=b - a, fingerprint="", linear=(), attention=())
        for a, b in spans]  # the seam pass's layout: no prefix entry, one seam per span, no interiors
    restarts = frozenset(range(1, len(entries)))
    with _split_at_seams(spec, mixers, entries, len(question), restarts) as final_conv:
        out = model(input_ids=ids, past_key_values=cache, position_ids=positions,
                    attention_mask=layer_masks(model, visible), use_cache=True, logits_to_keep=1)
    for layer, window in final_conv.items():
        cache_ops.set_conv_state(cache, layer, window)
    held, spanned = len(key_positions), len(span_positions)
    for layer in spec.attention:
        keys, values = cache_ops.kv(cache, layer.layer_idx)
        fresh = (held + fresh_rows).to(device)
        kept_keys = keys[:, :, :held].index_copy(2, patched_rows.to(device), keys.index_select(2, fresh))
        kept_values = values[:, :, :held].index_copy(2, patched_rows.to(device), values.index_select(2, fresh))
        cache_ops.set_kv(cache, layer.layer_idx, torch.cat([kept_keys, keys[:, :, held + spanned:]], dim=2),
                         torch.cat([kept_values, values[:, :, held + spanned:]], dim=2))
    return out.logits[0, -1]
