"""The shared prefix as a zero-token entry ahead of a request's segments.

Entries keep no end state of their own (it is as large as E or M and only the first segment of a
request could use it): the first segment's seam is recomputed from the shared prefix like every
later seam from the segment before it, and its interior composed by S <- M S + E. The seam pass
(executor/seam_pass.py) and the lean seam chain (runtime/seam_chain.py) chain from an anchor entry
whose "end state" and conv tail are the prefix's own, so the request is laid out as
[anchor, segment 0, ..., segment n-1] with a seam before every segment.
"""

from __future__ import annotations

from typing import Callable

import torch

from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry


def prefix_anchor(entries: list[SegmentEntry], recurrent: Callable[[int], torch.Tensor | None],
                  conv: Callable[[int], torch.Tensor | None]) -> SegmentEntry:
    """An entry of no tokens holding the prefix's state per linear layer (recurrent(layer) and
    conv(layer), batch dimension dropped; zeros where the prefix left none) and no K/V."""
    shape_of = {}
    for entry in entries:  # a state's shape: E's, or an old entry's end state
        for layer in entry.linear:
            state = layer.interior_state if layer.interior_state is not None else layer.end_state
            if state is not None:
                shape_of.setdefault(layer.layer_idx, state)
    first = entries[0]
    linear = []
    for layer in first.linear:
        state = recurrent(layer.layer_idx)
        if state is None and layer.layer_idx in shape_of:
            state = torch.zeros_like(shape_of[layer.layer_idx], dtype=torch.float32)
        tail = conv(layer.layer_idx)
        if tail is None and layer.conv_tail is not None:
            tail = torch.zeros_like(layer.conv_tail)
        linear.append(LinearLayerEntry(layer.layer_idx, state, None, None, tail))
    attention = tuple(AttentionLayerEntry(a.layer_idx, a.keys[:, :0], a.values[:, :0]) for a in first.attention)
    return SegmentEntry(token_ids=(), seam_tokens=0, fingerprint=first.fingerprint, linear=tuple(linear),
                        attention=attention)
