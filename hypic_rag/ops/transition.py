"""Interior end state E and transition operator M of one linear layer over a token range (the type;
each family's extraction and its plain reference live in its adapter, models/families/).

For a layer whose state follows S_t = A_t S_{t-1} + B_t over tokens [start, T):
    E = state reached from S = 0,   M = A_{T-1} ... A_start,   so that S_T = M S_start + E.

Each family's *_operator_ref builds M token by token from the plain recurrence; tests compare the
fast extraction with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InteriorTransition:
    """E [B, H, d_k, d_v] (Mamba2: [B, H, head_dim, d_state]) and M: [B, H, d_k, d_k] dense or [B, H] scalar."""

    state: torch.Tensor
    operator: torch.Tensor


def slice_time(x: torch.Tensor | None, start: int) -> torch.Tensor | None:
    return None if x is None else x[:, start:]
