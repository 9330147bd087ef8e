"""Short-conv-only layers (lfm2): the conv tail is the layer's only state; no operator."""

from __future__ import annotations

from hypic_rag.models.families.base import MixerAdapter
from hypic_rag.models.specs import MixerFamily

SHORT_CONV = MixerAdapter(family=MixerFamily.CONV_ONLY, chunk_fn=None, recurrent_fn=None, recurrence=None, interior=None,
                          operator_ref=None)
