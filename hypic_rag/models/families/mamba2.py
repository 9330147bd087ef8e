"""Mamba2 / SSD (falcon_h1, bamba, granitemoehybrid): a scalar decay per head, M = exp(A * sum dt)
(ops.transition.mamba2_interior, reference mamba2_operator_ref)."""

from __future__ import annotations

from dataclasses import dataclass

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.transition import mamba2_interior, mamba2_operator_ref


@dataclass(frozen=True)
class Mamba2Adapter(MixerAdapter):
    def seam_settings(self, names: list[str], call_args: tuple, call_kwargs: dict, width: int) -> dict:
        """One chunk per seam instead of padding it to the model's chunk (256): the next power of two
        >= 16 (what the Triton kernels accept), capped by the model's."""
        at = names.index("chunk_size")
        model_chunk = int(call_kwargs.get("chunk_size", call_args[at] if len(call_args) > at else width))
        return {"chunk_size": min(model_chunk, max(16, 1 << (width - 1).bit_length()))}


MAMBA2 = Mamba2Adapter(
    family=MixerFamily.MAMBA2,
    recurrence=RecurrenceForm(("0", "dt", "B", "C"), "initial_states", "return_final_states"),
    interior=mamba2_interior,
    operator_ref=mamba2_operator_ref,
)
