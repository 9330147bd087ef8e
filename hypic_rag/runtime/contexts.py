"""The lean runtime's request state, and the context that continues it by a plain forward.

LeanState is what a request has after its prompt: per attention layer the K/V of every earlier
token with their positions (one position vector shared by all layers), per linear layer the last K
pre-conv columns and the recurrent state. Keys are stored rotated to their real positions, so a
later token's attention needs no mask when every cached position precedes it (a decode step); a
forward of several new tokens uses the position-causal mask key position <= query position.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode


@dataclass
class LeanState:
    keys: list[torch.Tensor]  # per attention layer [kv_heads, T, D]
    values: list[torch.Tensor]
    positions: torch.Tensor  # [T] long: every position 0..T-1 once (in any order: a hypic state lists seams last)
    conv: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [C, K]
    recurrent: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> the family's state (fp32)

    @classmethod
    def empty(cls, runtime) -> "LeanState":
        shape = (runtime.kv_heads, 0, runtime.head_dim)
        none = [runtime.embed.new_zeros(shape) for _ in runtime.attention_layers]
        return cls(none, [t.clone() for t in none], torch.zeros(0, dtype=torch.long, device=runtime.device))

    def copy(self) -> "LeanState":
        """A state that can be extended without touching this one (K/V are never written in place)."""
        return LeanState(list(self.keys), list(self.values), self.positions, dict(self.conv), dict(self.recurrent))

    @property
    def length(self) -> int:
        return int(self.positions.shape[0])


def index_tensor(xs, device) -> torch.Tensor:
    """A host-built index list as a long tensor on the device (the plan of a request)."""
    return torch.tensor(xs, dtype=torch.long, device=device)


@dataclass(frozen=True)
class RunLayout:
    """Where runs of new tokens sit in one batched recurrence call: `runs` rows of `width` slots,
    `slots` the new token in each slot (padding: token 0), `rows` the flattened slots that are real
    tokens, `valid` 1.0 there and 0.0 in padding (a step that neither decays nor writes)."""

    runs: int
    width: int
    slots: torch.Tensor  # [R * W]
    rows: torch.Tensor  # [N]
    valid: torch.Tensor  # [R * W, 1]

    @staticmethod
    def lists(pieces: list[tuple[int, int]], width: int | None = None) -> tuple[int, list, list, list]:
        """(width, slots, rows, valid) as host lists; pieces: (index of its first new token, length)
        per run; every run padded to `width` (at least the longest run, and 1)."""
        width = max([n for _, n in pieces] + [width or 0, 1])
        slots, rows, valid = [], [], []
        for r, (token, n) in enumerate(pieces):
            slots += list(range(token, token + n)) + [0] * (width - n)
            rows += range(r * width, r * width + n)
            valid += [1] * n + [0] * (width - n)
        return width, slots, rows, valid

    @classmethod
    def of(cls, pieces: list[tuple[int, int]], device, width: int | None = None) -> "RunLayout":
        width, slots, rows, valid = cls.lists(pieces, width)
        return cls(len(pieces), width, index_tensor(slots, device), index_tensor(rows, device),
                   torch.tensor(valid, dtype=torch.float32, device=device)[:, None])


def conv_columns(before: torch.Tensor | None, mixed: torch.Tensor, k: int) -> torch.Tensor:
    """The conv's input columns [C, K + N]: the K columns a layer's state holds (zeros without one),
    then the new tokens' pre-conv projections `mixed` [N, C]."""
    if before is None:
        before = mixed.new_zeros(mixed.shape[1], k)
    return torch.cat([before.to(mixed.dtype), mixed.transpose(0, 1)], dim=-1)


def conv_new_tokens(columns: torch.Tensor, w, dtype: torch.dtype) -> torch.Tensor:
    """The causal conv + SiLU outputs [N, C] of the new tokens in `columns` [C, K + N] (conv_columns'
    layout: a window of K - 1 earlier columns before each)."""
    out = causal_conv(columns[None, :, 1:].to(w.conv.dtype), w.conv, w.conv_bias)[0]
    return out.transpose(0, 1).to(dtype)


def causal_conv(window: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal conv + SiLU over windows [R, C, K-1+W] (each starting with its K-1 earlier
    columns): outputs [R, C, W]."""
    return F.silu(F.conv1d(window, weight, bias, groups=window.shape[1]))


def causal_after(cached: int, n: int, device: torch.device):
    """The attention mask of n new tokens that follow `cached` earlier ones, in order: key position <=
    query position is then the bottom-right-aligned causal mask [n, cached + n]. On CUDA it is a
    CausalBias, which SDPA runs as its causal flash kernel; elsewhere, and while a TorchDispatchMode
    counts ops (a CausalBias cannot be made under one), the same mask as booleans."""
    if device.type == "cuda" and _get_current_dispatch_mode() is None:
        from torch.nn.attention.bias import causal_lower_right  # imported here: it costs seconds (torch._dynamo)

        return causal_lower_right(n, cached + n)
    return torch.ones(n, cached + n, dtype=torch.bool, device=device).tril(cached)


def attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
              scale: float) -> torch.Tensor:
    """Queries q [N, heads, D] over keys/values [kv_heads, T, D] (grouped heads), mask [N, T] (booleans or
    a CausalBias) or None; outputs [N, heads, D]."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask,
                                         scale=scale, enable_gqa=q.shape[1] != keys.shape[0])
    return out[0].transpose(0, 1)


FEW_QUERY_SCORES = 1 << 27  # fp32 scores (512 MB) up to which few_query_attention keeps every score


def few_query_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, hidden: torch.Tensor,
                        scale: float) -> torch.Tensor:
    """`attention` for a few queries over many keys under an arbitrary mask (`hidden` [N, T]: True where
    a key is hidden from a query), as two batched matmuls around a softmax, with the query heads of
    each key head folded into one matrix. A hypic request's seam pass is such a call: ~100 queries
    over thousands of cached keys, where a fused kernel with a mask puts one tile per head on the GPU
    and walks every key in it. Scores are fp32 (inputs upcast; TF32 where the caller allows it);
    outputs [N, heads, D] in the values' dtype. Above FEW_QUERY_SCORES scores, fused SDPA."""
    n, heads, d = q.shape
    kv, t = keys.shape[0], keys.shape[1]
    if n * heads * t > FEW_QUERY_SCORES:
        return attention(q, keys, values, ~hidden, scale)
    group = heads // kv
    # query head h reads key head h // group: each key head's queries folded into one matrix
    folded = q.view(n, kv, group, d).permute(1, 2, 0, 3).reshape(kv, group * n, d)
    scores = torch.bmm(folded.float(), keys.float().transpose(1, 2)).mul_(scale)  # [kv, group * n, T]
    scores.view(kv, group, n, t).masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    out = torch.bmm(probs, values)  # [kv, group * n, D]
    return out.view(kv, group, n, -1).permute(2, 0, 1, 3).reshape(n, heads, -1)


class ContinueFrom:
    """Extend `state` by new tokens at `positions` (after every cached position), in place."""

    def __init__(self, runtime, state: LeanState, positions: torch.Tensor):
        self.runtime, self.state = runtime, state
        n = positions.shape[0]
        # Every cached position precedes the new ones, which run in order (runtime/contexts.py: causal_after).
        self.mask = causal_after(state.length, n, positions.device) if n > 1 else None
        self.new_positions = positions
        self._n = n

    def conv(self, w, mixed: torch.Tensor) -> torch.Tensor:
        k = self.runtime.conv_width
        columns = conv_columns(self.state.conv.get(w.layer_idx), mixed, k)
        self.state.conv[w.layer_idx] = columns[:, -k:]
        return conv_new_tokens(columns, w, mixed.dtype)

    def recur(self, w, inputs) -> torch.Tensor:
        """The layer's recurrence over the new tokens from the state's (the family's inputs, token order)."""
        out, self.state.recurrent[w.layer_idx] = w.recurrence.continue_from(
            inputs, self.state.recurrent.get(w.layer_idx), self._n)
        return out

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Append the new K/V of attention layer `index` to the state; the new queries' outputs [N, heads, D]."""
        keys = torch.cat([self.state.keys[index], k.transpose(0, 1)], dim=1)
        values = torch.cat([self.state.values[index], v.transpose(0, 1)], dim=1)
        self.state.keys[index], self.state.values[index] = keys, values
        return attention(q, keys, values, self.mask, scale)

    def finish(self) -> None:
        self.state.positions = torch.cat([self.state.positions, self.new_positions])
