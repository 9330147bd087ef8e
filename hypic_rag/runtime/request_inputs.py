"""A hypic request's cached tensors, gathered for the seam chain (runtime/seam_chain.py).

Gathering is the only part of a request that reads its entries: every attention layer's keys and
values of every entry in one concatenation each, and the conv tails, interior operators, interior
states and the anchor's end states in one stack each. Eagerly these are fresh tensors
(`RequestInputs.gather`). A request replayed as a CUDA graph (runtime/request_graphs.py) copies
them into its bucket's buffers instead (`RequestInputs.buffers`, then `load` per request), whose
key/value rows may outnumber the request's: rows past its length keep whatever an earlier request
left there and are never read (the plan's kept rows all lie below its length).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hypic_rag.types import SegmentEntry


@dataclass(frozen=True)
class Parts:
    """The tensors of one request's entries, in the order they are concatenated or stacked."""

    keys: list  # per attention layer (model order), per entry: [kv_heads, length_j, D]
    values: list
    tails: list  # per linear layer (model order), per entry: [C, K]
    operators: list  # per linear layer, per entry after the anchor: the interior operator M
    states: list  # per linear layer, per entry after the anchor: the interior state E
    first: list  # per linear layer: the anchor's end state
    length: int  # every entry's tokens together (the key/value rows of one attention layer)
    attention_layers: int

    @classmethod
    def of(cls, runtime, entries: list[SegmentEntry]) -> Parts:
        """`entries` laid out as [anchor, segment 0, ...] (runtime/lean_request.py: anchored)."""
        lin = {layer.layer_idx: i for i, layer in enumerate(entries[0].linear)}
        att = {layer.layer_idx: i for i, layer in enumerate(entries[0].attention)}
        linear = [lin[idx] for idx in runtime.linear_layers]
        attention = [att[idx] for idx in runtime.attention_layers]
        later = entries[1:]
        return cls([e.attention[a].keys for a in attention for e in entries],
                   [e.attention[a].values for a in attention for e in entries],
                   [e.linear[i].conv_tail for i in linear for e in entries],
                   [e.linear[i].interior_operator for i in linear for e in later],
                   [e.linear[i].interior_state for i in linear for e in later],
                   [entries[0].linear[i].end_state for i in linear],
                   sum(e.length for e in entries), len(attention))

    def signature(self) -> tuple:
        """What a bucket's buffers must match besides the lengths: each kind of tensor's trailing shape,
        dtype and device."""
        kv = [(t.shape[0], t.shape[-1], t.dtype, str(t.device)) for t in (self.keys[0], self.values[0])]
        return tuple(kv) + tuple((tuple(t.shape), t.dtype, str(t.device))
                                 for t in (self.tails[0], self.operators[0], self.states[0], self.first[0]))


def _rows(kv: list, attention_layers: int, length: int) -> torch.Tensor:
    """Every attention layer's rows of every entry as [kv_heads, layers, length, D]."""
    cat = torch.cat(kv, dim=1)
    return cat.view(cat.shape[0], attention_layers, length, cat.shape[-1])


@dataclass(frozen=True)
class RequestInputs:
    keys: torch.Tensor  # [kv_heads, attention layers, rows >= length, D], unrotated
    values: torch.Tensor
    tails: torch.Tensor  # [linear layers * n, C, K]
    operators: torch.Tensor  # [linear layers * (n - 1), ...]
    states: torch.Tensor
    first: torch.Tensor  # [linear layers, ...]

    @classmethod
    def gather(cls, parts: Parts) -> RequestInputs:
        return cls(_rows(parts.keys, parts.attention_layers, parts.length),
                   _rows(parts.values, parts.attention_layers, parts.length),
                   torch.stack(parts.tails), torch.stack(parts.operators), torch.stack(parts.states),
                   torch.stack(parts.first))

    @classmethod
    def buffers(cls, parts: Parts, rows: int) -> RequestInputs:
        """Zeroed buffers shaped like `parts` gathered, with `rows` (>= parts.length) key/value rows."""
        def like(kv: list) -> torch.Tensor:
            t = kv[0]
            return t.new_zeros(t.shape[0], parts.attention_layers, rows, t.shape[-1])

        def stacked(ts: list) -> torch.Tensor:
            return ts[0].new_zeros(len(ts), *ts[0].shape)

        return cls(like(parts.keys), like(parts.values), stacked(parts.tails), stacked(parts.operators),
                   stacked(parts.states), stacked(parts.first))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.keys, self.values, self.tails, self.operators, self.states, self.first))

    def load(self, parts: Parts) -> None:
        """Copy a request's `parts` into these buffers (one concatenation or stack per kind, in place)."""
        if parts.length > self.keys.shape[2]:
            raise ValueError(f"{parts.length} key rows do not fit buffers of {self.keys.shape[2]}")
        self.keys[:, :, :parts.length].copy_(_rows(parts.keys, parts.attention_layers, parts.length))
        self.values[:, :, :parts.length].copy_(_rows(parts.values, parts.attention_layers, parts.length))
        torch.stack(parts.tails, out=self.tails)
        torch.stack(parts.operators, out=self.operators)
        torch.stack(parts.states, out=self.states)
        torch.stack(parts.first, out=self.first)
