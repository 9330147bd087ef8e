"""Block attention for hypic_rag.training: train some sequences the way hypic serves documents.

At query time a cached segment's attention K/V were computed with the segment alone after the shared
prefix (the BOS), while full recompute lets every document token attend to the documents before it.
A model whose first attention layer reads earlier documents (the one-hour runs put about half of its
weight there; bench/cross_document.py) can then answer differently through the cache: first-token
KL to full recompute was 9e-2 for run W0 of results/from_scratch.md, against 3e-5 for the staged
model. Block-Attention (Sun et al., 2024) and TurboRAG train with a mask that keeps each document to
itself. Here a share of the training sequences get that mask on the full-attention layers
(questions and answers still see everything) and the rest the plain causal mask, so the model
learns to answer alike under both, and full recompute is still what it was trained for. With half
the sequences masked (run W1), KL fell to 3.4e-3. Training only; the checkpoint is a plain model.
"""

from __future__ import annotations

import torch


def block_mask(doc_of: torch.Tensor, blocked: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] bool, True where a query may attend a key: causal everywhere, and in each blocked
    row a document token sees only position 0 (the shared prefix) and its own document.

    doc_of: [B, T] document number of each token (1, 2, ...; 0 outside documents); blocked: [B] bool."""
    if doc_of.dim() != 2 or blocked.shape != doc_of.shape[:1]:
        raise ValueError(f"doc_of must be [batch, tokens] and blocked [batch]; got {tuple(doc_of.shape)} "
                         f"and {tuple(blocked.shape)}")
    length = doc_of.shape[1]
    positions = torch.arange(length, device=doc_of.device)
    causal = positions.view(1, -1, 1) >= positions.view(1, 1, -1)
    query_doc, key_doc = doc_of.unsqueeze(2), doc_of.unsqueeze(1)
    local = (query_doc == 0) | (query_doc == key_doc) | (positions == 0).view(1, 1, -1)
    return (causal & (local | ~blocked.view(-1, 1, 1))).unsqueeze(1)


def attention_masks(model, doc_of: torch.Tensor, blocked: torch.Tensor) -> dict:
    """The per-layer-type mask mapping a Qwen3.5-style model's forward takes as attention_mask: the block
    mask for full attention, as the additive mask (0 or the dtype's minimum) that both eager and sdpa
    attention read, and none for the linear layers (right padding needs none)."""
    types = set(model.config.layer_types)
    if "full_attention" not in types:
        raise ValueError("block attention needs full-attention layers; this model has only "
                         f"{sorted(types)}")
    dtype = next(model.parameters()).dtype
    additive = torch.zeros((), dtype=dtype, device=doc_of.device).masked_fill(
        ~block_mask(doc_of, blocked), torch.finfo(dtype).min)
    return {t: (additive if t == "full_attention" else None) for t in types}
