"""The adapter protocol every mixer family implements (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.capture import RecurrenceCall
from hypic_rag.ops.transition import InteriorTransition


def product_of_transitions(batch: int, heads: int, d_k: int, steps: int, device, transition) -> torch.Tensor:
    """A_{T-1} ... A_1 A_0, each A_t = transition(t, I): the state a plain recurrent function reaches
    from an identity start on token t with zero value input (the reference operators). [B, H, d_k, d_k] fp32."""
    eye = torch.eye(d_k, dtype=torch.float32, device=device).expand(batch, heads, d_k, d_k).contiguous()
    product = eye.clone()
    for t in range(steps):
        product = transition(t, eye.clone()).float() @ product
    return product


@dataclass(frozen=True)
class RecurrenceForm:
    """How a family's chunked recurrence function takes a sequence and a state."""

    sequence_args: tuple[str, ...]  # split along dim 1 at the seams ("0": the first parameter, however named)
    initial_state: str
    final_state_flag: str


@dataclass(frozen=True)
class MixerAdapter:
    """family: the layers it serves.
    chunk_fn / recurrent_fn: the modeling module's functions it wraps, by name: the chunked
        recurrence (read for operators, split at seams) and the token-by-token one (reference and
        short seams); None where the family has none.
    recurrence: its chunked recurrence's argument form; None for a layer whose only state is its conv.
    interior: E and M over tokens [start, T) from a recorded call (None: no recurrent state).
    operator_ref: M from the same call the plain way (a product of per-token transitions), taking
        (call, start, recurrent_fn): the reference `interior` is tested against.
    conv_fn: the modeling module's causal-conv function the mixer calls on a multi-token forward (None:
        the mixer has no conv).
    step_seams_up_to: seams of at most this many tokens run the token-by-token recurrence (0: never).
    batched_runs: equal-width seams run as one call from the augmented start [0 | I].
    functions_module: the module holding chunk_fn / recurrent_fn when it is not the mixer's modeling
        module (a family whose recurrence transformers writes inline: see families/lightning.py).
    """

    family: MixerFamily
    chunk_fn: str | None
    recurrent_fn: str | None
    recurrence: RecurrenceForm | None
    interior: Callable[[RecurrenceCall, int], InteriorTransition] | None
    operator_ref: Callable[..., torch.Tensor] | None
    conv_fn: str | None = "causal_conv1d_fn"
    step_seams_up_to: int = 0
    batched_runs: bool = False
    functions_module: str | None = None

    def seam_settings(self, names: list[str], call_args: tuple, call_kwargs: dict, width: int) -> dict:
        """Extra arguments of the recurrence call for one seam of `width` tokens (none by default)."""
        return {}
