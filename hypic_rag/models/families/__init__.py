"""One adapter per mixer family: what the rest of the library needs to know about a kind of linear
layer, read in one place instead of branched on across the executor.

An adapter says which of the modeling module's functions it wraps (chunk_fn, recurrent_fn), which
chunked-recurrence call it reads and splits (RecurrenceForm: the sequence arguments, the
initial-state argument and the final-state flag), how the interior operator M and state E are
extracted from a recorded call (`interior`, with its plain reference `operator_ref` beside it in the
same module), and how a seam is run: the conv function the mixer calls, when a
short seam runs the step recurrence, whether equal-width seams batch into one augmented call, and
any per-seam settings of the call (Mamba2's chunk size). `adapter_for(layer_spec)` finds a layer's.

Which model types use which adapter, and where their decoder layers keep the mixer, is in
models/registry.py (SUPPORTED); models/function_swap.py owns every swap of a wrapped function.
Families: gated_delta (Gated DeltaNet and KDA), mamba2 (SSD), lightning (MiniMax's fixed-decay linear
attention, whose functions live in hypic_rag since transformers writes it inline), short_conv (LFM2).
"""

from __future__ import annotations

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm
from hypic_rag.models.families.gated_delta import GATED_DELTA, KIMI_DELTA
from hypic_rag.models.families.lightning import LIGHTNING
from hypic_rag.models.families.mamba2 import MAMBA2
from hypic_rag.models.families.short_conv import SHORT_CONV
from hypic_rag.models.specs import LinearLayerSpec, MixerFamily

ADAPTERS: dict[MixerFamily, MixerAdapter] = {a.family: a for a in (GATED_DELTA, MAMBA2, LIGHTNING, SHORT_CONV)}

__all__ = ["ADAPTERS", "GATED_DELTA", "KIMI_DELTA", "LIGHTNING", "MAMBA2", "SHORT_CONV", "MixerAdapter",
           "RecurrenceForm", "adapter_for"]


def adapter_for(layer: LinearLayerSpec) -> MixerAdapter:
    """A layer's adapter. Adapters of one family (GATED_DELTA, KIMI_DELTA) differ only in the names of
    the functions they wrap, which the layer's spec carries (chunk_fn, recurrent_fn)."""
    return ADAPTERS[layer.family]
