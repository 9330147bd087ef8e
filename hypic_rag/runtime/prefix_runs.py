"""The prefix-cache baseline on the lean runtime, as vLLM and SGLang run it for hybrids: the longest
exactly-seen prefix of segments is restored, everything after it is prefilled in ONE forward, and
a snapshot is kept at every segment boundary (K/V by reference, linear state and conv columns
at that boundary) for later requests.

A plain forward only returns the linear state after its last token. Here each uncovered segment
(and the question) is one run of the same batched recurrence call (runtime/recurrences.py) and
padded to one width with steps that neither decay nor write; the chain over runs (no cached
interiors between them: S_{r+1} = A_r S_r + B_r) gives the state at every boundary, by the same
log-depth scan as the seam chain. Attention is ordinary causal attention over the restored K/V
and the new tokens. So one forward yields the answer's logits and every boundary's snapshot.
"""

from __future__ import annotations

import torch

from hypic_rag.runtime.scan import tensor_core_fp32
from hypic_rag.runtime.contexts import ContinueFrom, LeanState, RunLayout, conv_columns, index_tensor
from hypic_rag.runtime.seam_chain import conv_runs


class PrefixRuns(ContinueFrom):
    """Continue `state` by the runs `widths` (uncovered segments, then the question) in one forward."""

    def __init__(self, runtime, state: LeanState, positions: torch.Tensor, widths: list[int]):
        super().__init__(runtime, state, positions)
        k, device = runtime.conv_width, runtime.device
        self.widths = widths
        self.layout = RunLayout.of([(sum(widths[:r]), w) for r, w in enumerate(widths)], device)
        stream, windows, ends, t = list(range(k)), [], [], 0
        for w in widths:
            own = list(range(k + t, k + t + w))
            windows += stream[-(k - 1):] + own + [0] * (self.layout.width - w)
            stream += own
            ends.append(stream[-k:])
            t += w
        self.windows, self.ends = index_tensor(windows, device), index_tensor(ends, device)  # ends: [R, K]
        self.boundary_conv: dict[int, torch.Tensor] = {}  # layer -> [R, C, K]
        self.boundary_state: dict[int, torch.Tensor] = {}  # layer -> [R, ...] the state after each run

    def conv(self, w, mixed: torch.Tensor) -> torch.Tensor:
        columns = conv_columns(self.state.conv.get(w.layer_idx), mixed, self.runtime.conv_width)
        self.boundary_conv[w.layer_idx] = columns[:, self.ends].transpose(0, 1)
        self.state.conv[w.layer_idx] = self.boundary_conv[w.layer_idx][-1]
        return conv_runs(columns, self.windows, self.layout.runs, w)  # run layout

    def recur(self, w, inputs) -> torch.Tensor:
        kind = w.recurrence
        layout = self.layout
        aux, runs = kind.runs(inputs, layout.slots, layout.valid, layout.runs, layout.width)  # [B | A] per run
        e = runs.shape[-1] - runs.shape[-2]
        first = self.state.recurrent.get(w.layer_idx)
        first = runs.new_zeros(runs.shape[1:-1] + (e,)) if first is None else kind.matrix(first)
        with tensor_core_fp32(runs.device):  # runtime/scan.py
            prefix_p, prefix_q = kind.prefix(runs[..., e:], runs[..., :e])
            after = torch.matmul(prefix_p, first) + prefix_q  # the state after each run
        starts = torch.cat([first[None], after[:-1]])
        self.boundary_state[w.layer_idx] = kind.native(after)
        self.state.recurrent[w.layer_idx] = self.boundary_state[w.layer_idx][-1]
        return kind.outputs(aux, starts, layout.rows, inputs[0].dtype)

    def snapshots(self) -> list[LeanState]:
        """The state after each run but the last (each uncovered segment's boundary): K/V as views of
        the request's own tensors, no copy."""
        self.finish()
        out, length = [], self.state.length - sum(self.widths)
        for r, w in enumerate(self.widths[:-1]):
            length += w
            out.append(LeanState([kv[:, :length] for kv in self.state.keys], [kv[:, :length] for kv in self.state.values],
                                 self.state.positions[:length],
                                 {i: c[r] for i, c in self.boundary_conv.items()},
                                 {i: s[r] for i, s in self.boundary_state.items()}))
        return out

    def finish(self) -> None:
        if not getattr(self, "_finished", False):
            super().finish()
            self._finished = True
