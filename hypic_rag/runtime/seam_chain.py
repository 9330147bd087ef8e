"""Every seam of a hypic request, and the question, in one lean forward whose op count does not grow
with the number of segments.

The math is executor/seam_pass.py's (read its docstring); what changes is how it is laid out:
  - planning (host, once per request) turns the request's shape into index tensors: where each
    new token sits, which cached K/V rows survive (every interior), the shift each
    cached key needs, the position-causal mask, and for the causal conv which earlier column each
    run's window starts from (a cached tail, or the fresh seam columns when an interior is shorter
    than the kernel) and which window outputs are real;
  - every per-segment tensor is gathered once per layer (one stack or one cat), never sliced per
    segment; the conv of every run is one batched call over gathered windows;
  - the linear states follow the chain S_{j+1} = M_j (A_j S_j + B_j) + E_j with the seams' own
    (A_j, B_j) from one batched call of the family's recurrence (runtime/recurrences.py; the
    question is one more run of that call;
    runs are padded to one width with steps of zero decay and zero write strength, which leave a
    state as it is), composed by the family's prefix composition (runtime/scan.py: a log-depth scan for
    matrices, a closed form for scalar decays), so a request's ops grow only with log2 of its
    segments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from hypic_rag.runtime.contexts import LeanState, RunLayout, causal_conv, few_query_attention
from hypic_rag.runtime.request_inputs import RequestInputs
from hypic_rag.runtime.scan import tensor_core_fp32
from hypic_rag.types import SegmentEntry


def conv_runs(columns: torch.Tensor, windows: torch.Tensor, runs: int, w) -> torch.Tensor:
    """The causal conv of every run at once: `windows` picks each run's K-1 earlier columns and its
    own (padded) from `columns` [C, cols]; returns the run layout [runs * W, C]."""
    gathered = columns.index_select(1, windows).view(columns.shape[0], runs, -1).transpose(0, 1)
    out = causal_conv(gathered.to(w.conv.dtype), w.conv, w.conv_bias)  # [R, C, W]
    return out.transpose(1, 2).reshape(-1, columns.shape[0]).to(columns.dtype)


PLAN_FIELDS = ("ids", "positions", "kept_rows", "kept_positions", "shifts", "windows", "outputs", "slots", "valid",
               "conv_after", "last")


@dataclass(frozen=True)
class SeamPlan:
    """A hypic request's shape as index tensors on the device (see the module docstring), all views of
    one packed tensor, so that a captured request takes a new plan with one copy:
      ids, positions [N]: seam tokens of segments 1..n-1, then the question (then padding);
      kept_rows, kept_positions, shifts: the rows of the gathered entry K/V that stay cached, their
        positions and the rotation each needs (its segment's offset);
      windows [R * (K-1+W)]: conv column sources (tails first, then new tokens);
      outputs [N]: the row of the flattened [R * W] run layout holding each new token;
      slots [R * W]: the new token in each slot of the run layout (padding: token 0);
      valid [R * W, 1]: 1 for real slots, 0 for padding (a step with no decay and no update);
      conv_after [K]: the columns of the conv state after the question;
      last [1]: the last real token (the question's), whose logits the request returns.
    A bucket's plan is padded: padding tokens and kept rows sit at one position after every real one,
    which the position-causal mask hides from every real query."""

    packed: torch.Tensor
    sizes: tuple
    seams: int  # n - 1
    width: int  # w (every seam)
    question: int
    run_width: int
    real_tokens: int  # new tokens before padding
    real_kept: int  # kept rows before padding

    def __post_init__(self):
        for name, view in zip(PLAN_FIELDS, self.packed.split(self.sizes)):
            object.__setattr__(self, name, view.view(-1, 1) if name == "valid" else view)

    def on(self, packed: torch.Tensor) -> SeamPlan:
        """The same plan read from `packed` (a bucket's buffer holding a copy of this plan's tensor)."""
        return replace(self, packed=packed)


def plan_request(entries: list[SegmentEntry], question: list[int], prefix_length: int, conv_width: int,
                 device: torch.device, run_width: int | None = None, tokens: int | None = None,
                 kept: int | None = None) -> SeamPlan:
    """The plan of a hypic request laid out as [prefix anchor, segment 0, ...] (executor/prefix_anchor.py):
    n >= 2 entries whose later ones all have a seam of the same width w > 0 followed by a non-empty
    interior (lean_request checks this first). Runs are padded to `run_width` (at least max(w,
    question length)), new tokens to `tokens` and kept rows to `kept` (a bucket's sizes), which
    changes no result."""
    k, n, w = conv_width, len(entries), entries[1].seam_tokens
    lengths = np.array([e.length for e in entries], dtype=np.int64)
    rows_before = np.cumsum(lengths) - lengths  # each entry's first row among the gathered K/V
    firsts = np.full(n, w, dtype=np.int64)
    firsts[0] = 0  # the anchor has no seam
    counts = lengths - firsts  # each entry's kept rows: all but its seam
    kept_rows = np.repeat(rows_before + firsts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    kept_pos = kept_rows + prefix_length  # an entry's row i sits at position prefix + rows before + i
    shifts = np.repeat(rows_before + prefix_length, counts)  # each kept key's rotation: its entry's offset
    ids = [t for e in entries[1:] for t in e.token_ids[:w]] + list(question)
    end = prefix_length + int(lengths.sum())
    positions = np.concatenate([(rows_before[1:, None] + prefix_length + np.arange(w)).ravel(),
                                np.arange(end, end + len(question))])
    widths = [w] * (n - 1) + [len(question)]
    width, slots, rows, valid = RunLayout.lists([(sum(widths[:r]), x) for r, x in enumerate(widths)],
                                                max(w, len(question), run_width or 0))
    fresh = n * k  # the new tokens' columns follow the n tails
    stream = list(range(k))  # the anchor's tail: the shared prefix's
    windows, t = [], 0
    for j, x in enumerate(widths, start=1):
        own = list(range(fresh + t, fresh + t + x))
        windows += stream[-(k - 1):] + own + [0] * (width - x)
        stream += own
        t += x
        if j < n:  # the interior after seam j: its last min(interior, K) columns from the cached tail
            m = min(entries[j].interior_length, k)
            stream += range(j * k + k - m, j * k + k)
    real_tokens, real_kept = len(ids), len(kept_rows)
    tokens, kept = tokens or real_tokens, kept or real_kept
    if tokens < real_tokens or kept < real_kept:
        raise ValueError(f"a plan of {real_tokens} new tokens and {real_kept} kept rows cannot be padded to "
                         f"{tokens} and {kept}")
    after = end + len(question)  # one position after every real one: hidden from every real query

    def padded(xs, size: int, value: int) -> np.ndarray:
        return np.concatenate([np.asarray(xs, dtype=np.int64), np.full(size - len(xs), value, dtype=np.int64)])

    fields = (padded(ids, tokens, 0), padded(positions, tokens, after), padded(kept_rows, kept, 0),
              padded(kept_pos, kept, after), padded(shifts, kept, 0), windows, padded(rows, tokens, 0), slots, valid,
              stream[-k:], [real_tokens - 1])
    packed = torch.from_numpy(np.concatenate([np.asarray(f, dtype=np.int64) for f in fields])).to(device)
    return SeamPlan(packed, tuple(len(f) for f in fields), n - 1, w, len(question), width, real_tokens, real_kept)


def run_planned(runtime, plan: SeamPlan, inputs: RequestInputs, prefix: LeanState) -> tuple[torch.Tensor, LeanState]:
    """The planned part of a hypic request: the seam chain, every seam and the question in one forward,
    the last real token's logits; (logits [vocab], the chain's state, padding rows included)."""
    chain = SeamChain(runtime, plan, inputs, prefix)
    hidden = runtime.forward(plan.ids, plan.positions, chain)
    return runtime.logits(hidden.index_select(0, plan.last)), chain.state


class SeamChain:
    """The forward context of one hypic request; after the forward, `state` is ready for decoding.

    Every per-segment tensor arrives gathered (runtime/request_inputs.py: one concatenation or stack
    each); here it is put in the chain's layout once for all layers, and the layer calls only select
    their layer's slice."""

    def __init__(self, runtime, plan: SeamPlan, inputs: RequestInputs, prefix: LeanState):
        from hypic_rag.runtime.lean_model import rotate

        self.runtime, self.plan = runtime, plan
        rt, s = runtime, plan.seams
        n = s + 1
        positions = torch.cat([prefix.positions, plan.kept_positions, plan.positions])
        self.hidden = positions[None, :] > plan.positions[:, None]  # the position-causal mask, inverted
        self.state = LeanState(list(prefix.keys), list(prefix.values), positions)
        self._linear_at = {idx: i for i, idx in enumerate(rt.linear_layers)}
        layers = len(rt.linear_layers)
        # attention: every layer's cached rows in one gather, every cached key moved to its position at once
        keys = inputs.keys.index_select(2, plan.kept_rows)
        values = inputs.values.index_select(2, plan.kept_rows)
        rope = rt.rope(plan.shifts)
        if rope is not None:  # NoPE keys stay as they are
            cos, sin = rope
            scaling = float(getattr(rt.rotary, "attention_scaling", 1.0) or 1.0)  # a shift is a pure rotation
            keys = rotate(keys.permute(2, 0, 1, 3).float(), cos[:, None] / scaling, sin[:, None] / scaling)
            keys = keys.to(values.dtype).permute(1, 2, 0, 3)
        self._keys = keys  # [kv_heads, layers, kept, D]
        self._values = values
        # linear layers: conv tails [layers, C, n*K], interiors [layers, n-1, ...], exact first end states
        tails = inputs.tails
        k = tails.shape[-1]
        self._tails = tails.view(layers, n, -1, k).transpose(1, 2).reshape(layers, -1, n * k)
        kind = rt.linear_weights[rt.linear_layers[0]].recurrence  # one family per model
        self._m = kind.entry_operator(inputs.operators)
        self._e = kind.matrix(inputs.states)
        self._m, self._e = self._m.view(layers, s, *self._m.shape[1:]), self._e.view(layers, s, *self._e.shape[1:])
        self._first = kind.matrix(inputs.first)
        self._valid = plan.valid.to(torch.float32)

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        keys = torch.cat([self.state.keys[index], self._keys[:, index], k.transpose(0, 1)], dim=1)
        values = torch.cat([self.state.values[index], self._values[:, index], v.transpose(0, 1)], dim=1)
        self.state.keys[index], self.state.values[index] = keys, values
        with tensor_core_fp32(q.device):  # runtime/scan.py: TF32 on CUDA
            return few_query_attention(q, keys, values, self.hidden, scale)

    def conv(self, w, mixed: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        columns = torch.cat([self._tails[self._linear_at[w.layer_idx]].to(mixed.dtype), mixed.transpose(0, 1)], -1)
        self.state.conv[w.layer_idx] = columns.index_select(1, plan.conv_after)
        return conv_runs(columns, plan.windows, plan.seams + 1, w)  # run layout [R * W, C]

    def recur(self, w, inputs) -> torch.Tensor:
        """Every run (each seam, then the question) in one call of the layer's recurrence from zero
        (inputs in the run layout from conv, per-token ones gathered into it; padded slots decay nothing
        and write nothing), chained through the cached interiors by the log-depth scan."""
        plan, at, kind = self.plan, self._linear_at[w.layer_idx], w.recurrence
        s = plan.seams
        aux, runs = kind.runs(inputs, plan.slots, self._valid, s + 1, plan.run_width)  # [R, H, d, e + d]: [B | A]
        e = self._e.shape[-1]
        with tensor_core_fp32(runs.device):  # runtime/scan.py: TF32 on CUDA, as fla's kernels multiply
            maps = torch.matmul(self._m[at], runs[:s]) + F.pad(self._e[at], (0, runs.shape[-1] - e))  # [M B + E | M A]
            prefix_p, prefix_q = kind.prefix(maps[..., e:], maps[..., :e])
            first = self._first[at]
            starts = torch.cat([first[None], torch.matmul(prefix_p[:s], first) + prefix_q[:s]])  # each run's start
            self.state.recurrent[w.layer_idx] = kind.native(runs[s, ..., e:] @ starts[s] + runs[s, ..., :e])
        return kind.outputs(aux, starts, plan.outputs, inputs[0].dtype)
