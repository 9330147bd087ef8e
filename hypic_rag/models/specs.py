"""Typed descriptions of a hybrid model's layers, read once from a loaded transformers model.

Everything downstream (precompute, composition, storage) dispatches on these specs, never on
model-type strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class MixerFamily(str, Enum):
    """How a linear layer's state evolves; decides how its transition operator M is obtained."""

    GATED_DELTA = "gated_delta"  # dense d_k x d_k operator (Gated DeltaNet, KDA)
    MAMBA2 = "mamba2"  # scalar per head: exp(A_h * sum dt)
    CONV_ONLY = "conv_only"  # no recurrent state, conv tail only (LFM2)


@dataclass(frozen=True)
class LinearLayerSpec:
    """A linear-attention / SSM / short-conv mixer at `layer_idx`.

    conv_width: columns kept in the layer's conv state (the kernel size K).
    chunk_fn / recurrent_fn: names of the module-level recurrence functions in the modeling module
        (the chunked one is wrapped at precompute time to read the exact inputs the model used).
    """

    layer_idx: int
    family: MixerFamily
    conv_width: int
    modeling_module: str
    chunk_fn: str | None
    recurrent_fn: str | None


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding on the cached keys: how many leading key dims rotate."""

    rotary_dim: int


@dataclass(frozen=True)
class AttentionLayerSpec:
    """A full-attention layer at `layer_idx`; rope None means its cached keys carry no position (NoPE)."""

    layer_idx: int
    rope: RopeSpec | None


@dataclass(frozen=True)
class ModelSpec:
    model_type: str
    linear: tuple[LinearLayerSpec, ...]
    attention: tuple[AttentionLayerSpec, ...]
    max_positions: int | None


def rotary_dim_of(rotary_emb: torch.nn.Module) -> int:
    """Rotated key dims = 2 * len(inv_freq) (covers partial rotary factors)."""
    return 2 * int(rotary_emb.inv_freq.numel())
