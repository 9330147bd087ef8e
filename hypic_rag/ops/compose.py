"""Composing a linear layer's state across a cached segment: S <- M S + E.

Dense operators (gated delta) are [B, H, d_k, d_k] acting on the key axis of S [B, H, d_k, d_v];
scalar operators (Mamba2) are [B, H] and scale the whole head state.
"""

from __future__ import annotations

import torch


def compose_state(state: torch.Tensor, operator: torch.Tensor | None, end: torch.Tensor) -> torch.Tensor:
    """M S + E in fp32 (operator None means identity, as in pic_addition)."""
    state = state.float()
    if operator is None:
        return state + end
    if operator.dim() == state.dim():
        return torch.matmul(operator.float(), state) + end
    return operator.float()[..., None, None] * state + end


def compose_state_ref(state: torch.Tensor, operator: torch.Tensor | None, end: torch.Tensor) -> torch.Tensor:
    """Reference: every value column advanced separately in float64."""
    s = state.double()
    out = torch.empty_like(s)
    for col in range(s.shape[-1]):
        column = s[..., col]
        if operator is None:
            moved = column
        elif operator.dim() == s.dim():
            moved = (operator.double() * column[..., None, :]).sum(-1)
        else:
            moved = operator.double()[..., None] * column
        out[..., col] = moved + end.double()[..., col]
    return out.float()


def merge_conv_tail(seam_tail: torch.Tensor, cached_tail: torch.Tensor, interior_len: int) -> torch.Tensor:
    """Conv state after a segment whose seam was recomputed: the last K pre-conv columns.

    The cached tail holds the segment's last K columns computed in isolation. When the interior is
    shorter than K, its leading columns belong to the seam, whose fresh values are used instead.
    """
    width = cached_tail.shape[-1]
    if interior_len >= width:
        return cached_tail
    if interior_len <= 0:
        return seam_tail
    return torch.cat([seam_tail[..., interior_len:], cached_tail[..., width - interior_len :]], dim=-1)
