"""Gated DeltaNet and KDA (qwen3_5, qwen3_next, kimi_linear): a dense d_k x d_k operator per head,
read from one augmented call of the layer's own chunk function (ops.transition.gated_delta_interior,
reference gated_delta_operator_ref)."""

from __future__ import annotations

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.transition import gated_delta_interior, gated_delta_operator_ref

GATED_DELTA = MixerAdapter(
    family=MixerFamily.GATED_DELTA,
    recurrence=RecurrenceForm(("query", "key", "value", "g", "beta"), "initial_state", "output_final_state"),
    interior=gated_delta_interior,
    operator_ref=gated_delta_operator_ref,
    step_seams_up_to=16,  # a seam is a few tokens: the step recurrence beats a 64-token chunk padded around it
    batched_runs=True,
)
