"""Building a SegmentEntry: one forward over the segment after the shared prefix.

Steps:
 1. Continue the shared-prefix cache (or an empty one) over the segment's tokens with explicit
    positions, recording every linear layer's recurrence inputs.
 2. Per linear layer: end state and conv tail straight from the cache; interior E and M over
    [seam, L) from the recorded inputs (augmented trick or gate product).
 3. Per attention layer: the segment's K/V, keys rotated back so the segment starts at position 0.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from hypic_rag.errors import RequestError
from hypic_rag.executor import cache_ops
from hypic_rag.models.families import adapter_for
from hypic_rag.models.specs import ModelSpec
from hypic_rag.ops.capture import capture_recurrences
from hypic_rag.ops.rope import shift_keys
from hypic_rag.ops.transition import InteriorTransition
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry


def _row(t: torch.Tensor | None, row: int) -> torch.Tensor | None:
    return None if t is None else t[row].detach().clone().contiguous()


@torch.no_grad()
def precompute_segments(
    model: torch.nn.Module,
    spec: ModelSpec,
    mixers: dict[int, torch.nn.Module],
    rotary_emb: torch.nn.Module | None,
    batch: list[tuple[int, ...]],
    prefix_cache: DynamicCache | None,
    prefix_length: int,
    seam_tokens: int,
    fingerprint: str,
) -> list[SegmentEntry]:
    """Entries of segments of one length, computed in one batched forward (row i -> entry i).

    Equal lengths need no padding, so every row sees exactly what a forward of its own would
    (left padding would decay the shared prefix's linear state over the pad tokens)."""
    lengths = {len(ids) for ids in batch}
    if len(lengths) != 1:
        raise RequestError(f"a precompute batch needs segments of one length, got lengths {sorted(lengths)}")
    device = next(model.parameters()).device
    (length,) = lengths
    rows = len(batch)
    if prefix_cache is not None:
        cache = cache_ops.repeat_batch(prefix_cache, rows)
    else:
        cache = cache_ops.new_cache(model)
    ids = torch.tensor([list(t) for t in batch], dtype=torch.long, device=device)
    positions = torch.arange(prefix_length, prefix_length + length, device=device)[None].expand(rows, -1)
    with capture_recurrences(model, spec.linear, mixers) as calls:
        model.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)

    seam = min(seam_tokens, length)
    interiors: dict[int, InteriorTransition] = {}
    for layer in spec.linear:
        interior = adapter_for(layer).interior
        if interior is not None and seam < length:
            interiors[layer.layer_idx] = interior(calls[layer.layer_idx], seam)
    kv = {}
    for layer in spec.attention:
        keys, values = cache_ops.kv(cache, layer.layer_idx)
        pair = {"keys": keys[:, :, prefix_length:], "values": values[:, :, prefix_length:]}
        if layer.rope is not None and rotary_emb is not None:  # stored at position 0
            pair[layer.rope.tensor] = shift_keys(pair[layer.rope.tensor], rotary_emb, -prefix_length)
        kv[layer.layer_idx] = (pair["keys"], pair["values"])
    entries = []
    for row, token_ids in enumerate(batch):
        linear = []
        for layer in spec.linear:
            interior = interiors.get(layer.layer_idx)
            linear.append(
                LinearLayerEntry(
                    layer_idx=layer.layer_idx,
                    end_state=None,  # composed from the prefix at query time (executor/prefix_anchor.py)
                    interior_state=None if interior is None else _row(interior.state, row),
                    interior_operator=None if interior is None else _row(interior.operator, row),
                    conv_tail=_row(cache_ops.conv_state(cache, layer.layer_idx), row),
                )
            )
        attention = tuple(
            AttentionLayerEntry(layer.layer_idx, _row(kv[layer.layer_idx][0], row), _row(kv[layer.layer_idx][1], row))
            for layer in spec.attention
        )
        entries.append(SegmentEntry(token_ids=tuple(int(t) for t in token_ids), seam_tokens=seam,
                                    fingerprint=fingerprint, linear=tuple(linear), attention=attention))
    return entries
