"""The cold path on the lean runtime: every missing segment of a request precomputed in ONE forward.

Each segment continues the shared prefix on its own (what executor/precompute.py does with one
transformers forward per length group), so the segments ride side by side in one flat forward:
  - attention: every new token sees the shared prefix and the earlier tokens of its own segment,
    one batch row per segment (segment layout), so it costs what per-segment forwards would, not
    the square of the whole batch; each segment's keys are rotated back by the prefix length for
    its entry, as precompute stores them;
  - conv: each segment's window starts from the shared prefix's conv columns, all segments in one
    batched call (segment layout: one row block per segment, padded to the longest);
  - recurrence: two batched calls per layer, one over every seam (width w) and one over every
    interior (width of the longest), both through the family's `runs` from zero; the seam's end
    state is A S_prefix + B, the interior's own (E, M) is the entry's, the true outputs follow
    from each run's start, and the segment's end state is M S_seam_end + E.
The forward's outputs equal a plain forward of each segment after the prefix; the entries equal
executor/precompute.py's (tests/test_lean_runtime.py compares both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hypic_rag.ops.rope import shift_keys
from hypic_rag.runtime.contexts import LeanState, RunLayout, conv_columns, index_tensor
from hypic_rag.runtime.seam_chain import conv_runs
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry


class SegmentRuns:
    """The forward context of a batch of segments, each after `prefix`; `entries()` after the forward."""

    def __init__(self, runtime, prefix: LeanState, segments: list[tuple[int, ...]], seam: int):
        self.runtime, self.prefix, self.segments = runtime, prefix, segments
        device, k = runtime.device, runtime.conv_width
        p0, lengths = prefix.length, [len(s) for s in segments]
        self.seams = [min(seam, n) for n in lengths]
        self.starts = [sum(lengths[:j]) for j in range(len(lengths))]
        width = max(lengths)
        self.width = width
        ids, positions, windows, tails = [], [], [], []
        for j, (seg, start) in enumerate(zip(segments, self.starts)):
            n = len(seg)
            ids += seg
            positions += range(p0, p0 + n)
            own = list(range(k + start, k + start + n))
            windows += list(range(1, k)) + own + [0] * (width - n)
            tails += (list(range(k)) + own)[-k:]
        self.ids, self.positions = index_tensor(ids, device), index_tensor(positions, device)
        layout = [start + t if t < n else 0 for start, n in zip(self.starts, lengths) for t in range(width)]
        self.layout_tokens = index_tensor(layout, device)  # the token in each row of the segment layout (padding: 0)
        self.token_rows = index_tensor([j * width + t for j, n in enumerate(lengths) for t in range(n)], device)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()  # padded rows: discarded
        self.mask = torch.cat([torch.ones(width, p0, dtype=torch.bool, device=device), causal], dim=1)
        self.windows, self.tails = index_tensor(windows, device), index_tensor(tails, device)
        self.seam_runs = RunLayout.of(list(zip(self.starts, self.seams)), device)
        self.interior_runs = RunLayout.of([(s + w, n - w) for s, w, n in zip(self.starts, self.seams, lengths)], device)
        # each run slot's row in the conv's segment layout (padding slots: token 0's row, 0)
        self.seam_rows = self.token_rows.index_select(0, self.seam_runs.slots)
        self.interior_rows = self.token_rows.index_select(0, self.interior_runs.slots)
        order = []  # token t of segment j: its row in [seam outputs | interior outputs]
        seam_total, seam_seen, interior_seen = sum(self.seams), 0, 0
        for w, n in zip(self.seams, lengths):
            order += range(seam_seen, seam_seen + w)
            order += range(seam_total + interior_seen, seam_total + interior_seen + n - w)
            seam_seen, interior_seen = seam_seen + w, interior_seen + n - w
        self.order = index_tensor(order, device)
        self.kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.conv_tails: dict[int, torch.Tensor] = {}
        self.states: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # end, E, M per segment

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """Each segment's queries over the prefix and its own keys, one batch row per segment."""
        self.kv[index] = (k.transpose(0, 1), v.transpose(0, 1))
        n, width = len(self.segments), self.width

        def rows(t: torch.Tensor) -> torch.Tensor:  # [N, h, D] -> [n, h, width, D]
            return t.index_select(0, self.layout_tokens).view(n, width, *t.shape[1:]).transpose(1, 2)

        prefix_k, prefix_v = self.prefix.keys[index], self.prefix.values[index]
        keys = torch.cat([prefix_k.expand(n, *prefix_k.shape), rows(k)], dim=2)
        values = torch.cat([prefix_v.expand(n, *prefix_v.shape), rows(v)], dim=2)
        out = F.scaled_dot_product_attention(rows(q), keys, values, attn_mask=self.mask, scale=scale,
                                             enable_gqa=q.shape[1] != k.shape[1])  # [n, heads, width, D]
        return out.transpose(1, 2).reshape(n * width, *q.shape[1:]).index_select(0, self.token_rows)

    def conv(self, w, mixed: torch.Tensor) -> torch.Tensor:
        k = self.runtime.conv_width
        columns = conv_columns(self.prefix.conv.get(w.layer_idx), mixed, k)
        self.conv_tails[w.layer_idx] = columns.index_select(1, self.tails).view(columns.shape[0], -1, k)
        return conv_runs(columns, self.windows, len(self.segments), w)  # segment layout [n * width, C]

    def recur(self, w, inputs) -> torch.Tensor:
        """Every seam from the prefix's state, every interior from its seam's end: two calls."""
        kind, s, i, dtype = w.recurrence, self.seam_runs, self.interior_runs, inputs[0].dtype
        aux, maps = kind.runs(self._gather(kind, inputs, self.seam_rows), s.slots, s.valid, s.runs, s.width)  # [B | A] per seam
        e = maps.shape[-1] - maps.shape[-2]
        start = self.prefix.recurrent.get(w.layer_idx)
        start = maps.new_zeros(maps.shape[1:-1] + (e,)) if start is None else kind.matrix(start)
        seam_out = kind.outputs(aux, start.expand(s.runs, *start.shape), s.rows, dtype)
        seam_end = torch.matmul(maps[..., e:], start) + maps[..., :e]
        aux, maps = kind.runs(self._gather(kind, inputs, self.interior_rows), i.slots, i.valid, i.runs, i.width)  # [E | M] each
        interior_out = kind.outputs(aux, seam_end, i.rows, dtype)
        end = torch.matmul(maps[..., e:], seam_end) + maps[..., :e]
        self.states[w.layer_idx] = (kind.native(end), kind.native(maps[..., :e]), kind.operator_native(maps[..., e:]))
        return torch.cat([seam_out, interior_out]).index_select(0, self.order)

    @staticmethod
    def _gather(kind, inputs, rows: torch.Tensor) -> tuple:
        """The conv's outputs (segment layout) into a call's run layout (`rows`); per-token inputs as they are."""
        return tuple(t if n in kind.per_token else t.index_select(0, rows) for n, t in enumerate(inputs))

    def entries(self, fingerprint: str) -> list[SegmentEntry]:
        """One SegmentEntry per segment, as executor/precompute.py builds them (views of this batch's
        tensors: no copy per segment; a store that serialises an entry copies it then)."""
        rt, p0 = self.runtime, self.prefix.length
        keys = {}
        for index, (k, v) in self.kv.items():
            if rt.rotary is not None and p0:
                k = shift_keys(k, rt.rotary, -p0)
            keys[index] = (k, v)
        out = []
        for j, (seg, start, seam) in enumerate(zip(self.segments, self.starts, self.seams)):
            n = len(seg)
            interior = seam < n
            linear = tuple(
                LinearLayerEntry(idx, None, self.states[idx][1][j] if interior else None,
                                 self.states[idx][2][j] if interior else None, self.conv_tails[idx][:, j])
                for idx in rt.linear_layers)
            attention = tuple(AttentionLayerEntry(idx, keys[a][0][:, start:start + n], keys[a][1][:, start:start + n])
                              for a, idx in enumerate(rt.attention_layers))
            out.append(SegmentEntry(token_ids=tuple(seg), seam_tokens=seam, fingerprint=fingerprint,
                                    linear=linear, attention=attention))
        return out
