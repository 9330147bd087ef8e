"""Attention supervision for train_small_model.py: an auxiliary loss that points one attention layer's
answer-position queries at the document token where the answer's value starts.

The answer loss teaches the person match only through the copy it feeds, and from-scratch runs
learned to copy the asked kind of fact long before they learned whose (bench/results/from_scratch.md).
This loss gives the query/key projections, and the Gated DeltaNet layers that feed them, the match
directly: for each (query, value) pointer of a training Batch, minus the log of the head-averaged
attention weight the layer puts on the value token. Training only; the checkpoint is a plain model.
"""

from __future__ import annotations

import math
import sys

import torch


def attention_layer_indices(model) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if getattr(layer, "self_attn", None) is not None]


class AnswerAttention:
    """Hooks one full-attention layer; while pointers are set, each forward records the layer's log
    attention weights for the pointer rows (recomputed from the layer's own input: q/k projections,
    q/k norms and rotary embedding, exactly as its attention computes them)."""

    def __init__(self, model, layer: int):
        attn = getattr(model.model.layers[layer], "self_attn", None)
        if attn is None:
            raise ValueError(f"layer {layer} has no full attention; pick one of {attention_layer_indices(model)}")
        self._rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self._pointers = None
        self.log_weights = None  # [pointers, heads, keys] after a forward with pointers set
        self._handle = attn.register_forward_hook(self._record, with_kwargs=True)

    def close(self) -> None:
        self._handle.remove()

    def loss(self, model, ids: torch.Tensor, pointers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(model output, supervision loss) for one forward over ids; pointers as in Batch."""
        self._pointers = pointers
        try:
            out = model(input_ids=ids)
        finally:
            self._pointers = None
        if not len(pointers):
            return out, out.logits.new_zeros(())
        logw = self.log_weights.gather(2, pointers[:, 2].view(-1, 1, 1).expand(-1, self.log_weights.shape[1], 1))
        per_pointer = torch.logsumexp(logw.squeeze(2), dim=1) - math.log(self.log_weights.shape[1])
        return out, -per_pointer.mean()

    def _record(self, module, args, kwargs, output) -> None:
        if self._pointers is None or not len(self._pointers):
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        rows, queries = self._pointers[:, 0], self._pointers[:, 1]
        d, heads = module.head_dim, module.config.num_attention_heads
        bsz, length, _ = hidden.shape
        q = module.q_proj(hidden[rows, queries]).view(len(rows), heads, 2 * d)[..., :d]  # [q | gate] per head
        q = module.q_norm(q).unsqueeze(2)  # [P, H, 1, d]
        k = module.k_norm(module.k_proj(hidden).view(bsz, length, -1, d)).transpose(1, 2)  # [B, KV, T, d]
        q, _ = self._rotary(q, q, cos[rows, queries].unsqueeze(1), sin[rows, queries].unsqueeze(1))
        _, k = self._rotary(k, k, cos, sin)
        groups = k.shape[1]
        scores = torch.einsum("pgrd,pgtd->pgrt", q.view(len(rows), groups, heads // groups, d), k[rows])
        scores = scores.reshape(len(rows), heads, length) * module.scaling  # head h reads kv group h // rep
        future = torch.arange(length, device=hidden.device).view(1, 1, -1) > queries.view(-1, 1, 1)
        self.log_weights = torch.log_softmax(scores.masked_fill(future, float("-inf")), dim=-1)
