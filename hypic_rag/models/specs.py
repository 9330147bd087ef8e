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
    LIGHTNING = "lightning"  # scalar per head: lambda_h^L, a fixed decay (MiniMax lightning attention)
    CONV_ONLY = "conv_only"  # no recurrent state, conv tail only (LFM2)


@dataclass(frozen=True)
class LinearLayerSpec:
    """A linear-attention / SSM / short-conv mixer at `layer_idx`.

    conv_width: columns kept in the layer's conv state (the kernel size K); 0 for a mixer with no conv.
    chunk_fn / recurrent_fn: names of the module-level recurrence functions in the modeling module
        (the chunked one is wrapped at precompute time to read the exact inputs the model used);
        modeling_module is where they live (hypic_rag's own module for lightning attention).
    """

    layer_idx: int
    family: MixerFamily
    conv_width: int
    modeling_module: str
    chunk_fn: str | None
    recurrent_fn: str | None


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding in an attention layer's cache: how many leading dims rotate, and in which of
    the layer's two cached tensors ("keys" in standard attention; "values" in an MLA cache whose
    values slot holds the rotated shared key, as Ring-linear's)."""

    rotary_dim: int
    tensor: str = "keys"

    def __post_init__(self) -> None:
        if self.tensor not in ("keys", "values"):
            raise ValueError(f"RopeSpec.tensor must be 'keys' or 'values', not {self.tensor!r}")


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
