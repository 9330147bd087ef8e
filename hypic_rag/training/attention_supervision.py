"""Attention supervision for hypic_rag.training: an auxiliary loss that points one attention layer's
answer-position queries at the document token where the answer's value starts.

The answer loss teaches the person match only through the copy it feeds, and from-scratch runs
learned to copy the asked kind of fact long before they learned whose (bench/results/from_scratch.md).
This loss gives the query/key projections, and the Gated DeltaNet layers that feed them, the match
directly: for each (query, value) pointer of a training Batch, minus the log of the head-averaged
attention weight the layer puts on the value token. Training only; the checkpoint is a plain model.

Pointing alone leaves the copy to the answer loss, and in one of two seeds the layer pointed at the
value for hundreds of steps before anything copied it. The copy term closes that: the layer's output
at the query, read out through the model's final norm and (tied) lm_head as if it were the last
hidden state, is trained with cross-entropy to give the value's first token.

Two-hop questions (`... of the mentor of N?`) can supervise two layers in one forward (supervise): the
first hop on an earlier layer, pointing at and reading out the mentor's name in N's document, and the
second on the usual layer, at the mentor's value.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch


def attention_layer_indices(model) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if getattr(layer, "self_attn", None) is not None]


@dataclass(frozen=True)
class Supervised:
    """One forward's model output and its two auxiliary losses (zero when a batch has no pointers)."""

    output: object
    pointing: torch.Tensor
    copying: torch.Tensor


class AnswerAttention:
    """Hooks one full-attention layer; while pointers are set, each forward records the layer's log
    attention weights for the pointer rows (recomputed from the layer's own input: q/k projections,
    q/k norms and rotary embedding, exactly as its attention computes them)."""

    def __init__(self, model, layer: int):
        attn = getattr(model.model.layers[layer], "self_attn", None)
        if attn is None:
            raise ValueError(f"layer {layer} has no full attention; pick one of {attention_layer_indices(model)}")
        self._rotary = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        self._readout = lambda h: model.lm_head(model.model.norm(h))
        self._pointers = None
        self.copy_logits = None  # [pointers, vocab]
        self.log_weights = None  # [pointers, heads, keys] after a forward with pointers set
        self._handle = attn.register_forward_hook(self._record, with_kwargs=True)

    def close(self) -> None:
        self._handle.remove()

    def loss(self, model, ids: torch.Tensor, pointers: torch.Tensor) -> Supervised:
        """One forward over ids with both losses; pointers as in Batch."""
        return supervise(model, ids, [(self, pointers)])[0]

    def _losses(self, out, ids: torch.Tensor, pointers: torch.Tensor) -> Supervised:
        if not len(pointers):
            zero = out.logits.new_zeros(())
            return Supervised(out, zero, zero)
        rows, values = pointers[:, 0], pointers[:, 2]
        logw = self.log_weights.gather(2, values.view(-1, 1, 1).expand(-1, self.log_weights.shape[1], 1))
        per_pointer = torch.logsumexp(logw.squeeze(2), dim=1) - math.log(self.log_weights.shape[1])
        copying = torch.nn.functional.cross_entropy(self.copy_logits, ids[rows, values])
        return Supervised(out, -per_pointer.mean(), copying)

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
        self.copy_logits = self._readout(output[0][rows, queries])
        future = torch.arange(length, device=hidden.device).view(1, 1, -1) > queries.view(-1, 1, 1)
        self.log_weights = torch.log_softmax(scores.masked_fill(future, float("-inf")), dim=-1)


def supervise(model, ids: torch.Tensor, armed: list[tuple[AnswerAttention, torch.Tensor]],
              attention_mask=None) -> list[Supervised]:
    """One forward over ids (and attention_mask, for the model's forward) with every (hooked layer, its
    pointer rows) pair armed; each pair's losses, all with the same output. The recorded weights are
    causal: pointer queries are answer positions, which every mask of block_attention.py lets see
    the whole sequence before them."""
    if len({id(hook) for hook, _ in armed}) != len(armed):
        raise ValueError("each hooked layer takes one set of pointers per forward")
    for hook, pointers in armed:
        hook._pointers = pointers
    try:
        out = model(input_ids=ids, attention_mask=attention_mask)
    finally:
        for hook, _ in armed:
            hook._pointers = None
    return [hook._losses(out, ids, pointers) for hook, pointers in armed]
