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

from hypic_rag.executor import cache_ops
from hypic_rag.models.specs import MixerFamily, ModelSpec
from hypic_rag.ops.capture import capture_recurrences
from hypic_rag.ops.rope import shift_keys
from hypic_rag.ops.transition import InteriorTransition, gated_delta_interior, mamba2_interior
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry

_INTERIOR = {MixerFamily.GATED_DELTA: gated_delta_interior, MixerFamily.MAMBA2: mamba2_interior}


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t[0].detach().clone().contiguous()


@torch.no_grad()
def precompute_segment(
    model: torch.nn.Module,
    spec: ModelSpec,
    mixers: dict[int, torch.nn.Module],
    rotary_emb: torch.nn.Module | None,
    token_ids: tuple[int, ...],
    prefix_cache: DynamicCache | None,
    prefix_length: int,
    seam_tokens: int,
    fingerprint: str,
) -> SegmentEntry:
    device = next(model.parameters()).device
    length = len(token_ids)
    cache = cache_ops.clone_cache(prefix_cache) if prefix_cache is not None else cache_ops.new_cache(model)
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    positions = torch.arange(prefix_length, prefix_length + length, device=device)[None]
    with capture_recurrences(model, spec.linear, mixers) as calls:
        model.model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True)

    seam = min(seam_tokens, length)
    linear = []
    for layer in spec.linear:
        interior: InteriorTransition | None = None
        if layer.family in _INTERIOR and seam < length:
            interior = _INTERIOR[layer.family](calls[layer.layer_idx], seam)
        linear.append(
            LinearLayerEntry(
                layer_idx=layer.layer_idx,
                end_state=_detach(cache_ops.recurrent_state(cache, layer.layer_idx)),
                interior_state=None if interior is None else _detach(interior.state),
                interior_operator=None if interior is None else _detach(interior.operator),
                conv_tail=_detach(cache_ops.conv_state(cache, layer.layer_idx)),
            )
        )
    attention = []
    for layer in spec.attention:
        keys, values = cache_ops.kv(cache, layer.layer_idx)
        keys = keys[:, :, prefix_length:]
        if layer.rope is not None and rotary_emb is not None:
            keys = shift_keys(keys, rotary_emb, -prefix_length)
        attention.append(AttentionLayerEntry(layer.layer_idx, _detach(keys), _detach(values[:, :, prefix_length:])))
    return SegmentEntry(
        token_ids=tuple(int(t) for t in token_ids),
        seam_tokens=seam,
        fingerprint=fingerprint,
        linear=tuple(linear),
        attention=tuple(attention),
    )
