"""One adapter per mixer family: what the rest of the library needs to know about a kind of linear
layer, read in one place instead of branched on across the executor.

An adapter says which chunked-recurrence call it reads and splits (RecurrenceForm: the sequence
arguments, the initial-state argument and the final-state flag), how the interior operator M and
state E are extracted from a recorded call (`interior`, with its plain reference `operator_ref`
beside it in ops/transition.py), and how a seam is run: the conv function the mixer calls, when a
short seam runs the step recurrence, whether equal-width seams batch into one augmented call, and
any per-seam settings of the call (Mamba2's chunk size). `adapter_for(layer_spec)` finds a layer's.

Which model types map to which family, and where their mixers and functions live, is in
models/registry.py (SUPPORTED).
"""

from __future__ import annotations

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm
from hypic_rag.models.families.gated_delta import GATED_DELTA
from hypic_rag.models.families.mamba2 import MAMBA2
from hypic_rag.models.families.short_conv import SHORT_CONV
from hypic_rag.models.specs import LinearLayerSpec, MixerFamily

ADAPTERS: dict[MixerFamily, MixerAdapter] = {a.family: a for a in (GATED_DELTA, MAMBA2, SHORT_CONV)}

__all__ = ["ADAPTERS", "MixerAdapter", "RecurrenceForm", "adapter_for"]


def adapter_for(layer: LinearLayerSpec) -> MixerAdapter:
    return ADAPTERS[layer.family]
