"""Which cached tokens a forward's last query reads: its attention probabilities at every full-attention
layer, recorded while the forward runs.

transformers' attention modules call one attention function (SDPA, FlashAttention..., or the
modeling module's `eager_attention_forward`), which sees the query and the keys after RoPE and the
cache update. For the length of one forward this wraps that function: for the tracked model's
attention layers, in the calling thread, it also computes softmax(q_last k^T * scaling), summed over
heads, before handing the call on unchanged. The last query row sees every key (it is the newest
token), so no mask enters the sum. Any other call (another model, another thread) goes straight to
the original. The swap is taken under the process-wide SWAP_LOCK like every other function swap
(models/function_swap.py).
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from transformers.modeling_utils import AttentionInterface

from hypic_rag.models.function_swap import SWAP_LOCK, swapped_functions


def _last_row_probabilities(query: torch.Tensor, key: torch.Tensor, scaling: float | None) -> torch.Tensor:
    """[keys]: the last query's attention probabilities summed over heads (grouped K/V heads repeated)."""
    q = query[0, :, -1].float()  # [heads, dim]
    k = key[0].float()  # [kv_heads, keys, dim]
    k = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    scores = torch.einsum("hd,hkd->hk", q, k) * scale
    return scores.softmax(dim=-1).sum(dim=0)


@contextmanager
def last_query_attention(model: torch.nn.Module, attention_layers: set[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Inside the block, the first forward of `model` records, per full-attention layer index in
    `attention_layers`, the last query's attention over the layer's keys (in cache order), summed
    over heads: the yielded dict, filled as the forward runs."""
    recorded: dict[int, torch.Tensor] = {}
    owner = threading.get_ident()
    ours = {id(m) for m in model.modules()}
    implementation = getattr(model.config, "_attn_implementation", None) or "eager"

    order = sorted(attention_layers)

    def recording(original):
        def attention(module, query, key, value, *args, **kwargs):
            if threading.get_ident() == owner and id(module) in ours and len(recorded) < len(order):
                # the k-th attention call of a forward is its k-th attention layer: layers run in order,
                # and a shared block (Zamba2's) does not know which layer it serves
                recorded[order[len(recorded)]] = _last_row_probabilities(query, key, kwargs.get("scaling"))
            return original(module, query, key, value, *args, **kwargs)
        return attention

    modeling = sys.modules[type(model).__module__]
    eager = {"eager_attention_forward": recording(modeling.eager_attention_forward)} \
        if hasattr(modeling, "eager_attention_forward") else {}
    registry = AttentionInterface._global_mapping
    with SWAP_LOCK, swapped_functions(modeling, eager):
        original = registry.get(implementation)
        if original is not None:
            registry[implementation] = recording(original)
        try:
            yield recorded
        finally:
            if original is not None:
                registry[implementation] = original
