"""Decode steps over preallocated buffers, so that a step can be captured once as a CUDA graph and replayed.

A LeanState grows by concatenation (new K/V tensors every step): fine eagerly, but a replayed graph
cannot. DecodeBuffers holds one request's state at a fixed capacity: per attention layer K/V
[kv_heads, C, D] (rows at or past the filled length masked out), per linear layer the conv columns
and the recurrent state, all updated in place, and the next token and its row as device tensors.
`DecodeBuffers.step()` reads and writes only these tensors, so replaying a capture of it equals
calling it again; tests/test_static_decode.py checks that calling it matches ContinueFrom token by
token and that torch.compile(fullgraph=True) runs many steps without recompiling (no per-step
Python value). Every row of a state holds one position (0..T-1, in any order), so the next token's
row number is its position.

Decoder is what a request's decode loop calls, one token at a time. On CUDA its first step runs
eagerly (the warm-up: Triton autotuning, cuBLAS workspaces), the second captures the step into a
CUDA graph, and every later one replays it; elsewhere every step runs eagerly. A request owns its
buffers and graph while it decodes (no sharing between interleaved requests), from its first step.
With a DecodePool (the lean runtime keeps one on CUDA) they go back to the pool when the request's
Decoder is dropped, and the next request of the same capacity loads its state into them and replays
the captured step from its first token: one capture per capacity, not per request. Past the
capacity a request moves to buffers twice as large (from the pool, or captured again). A Decoder may
be handed the step compiled by inductor (the lean runtime's `compile_graphs`, runtime/compiled.py):
it compiles on its first call, before the capture; a pooled graph keeps what it captured.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable

import torch

from hypic_rag.runtime.contexts import LeanState, attention, conv_columns, conv_new_tokens
from hypic_rag.runtime.cuda_graphs import captured, on_side_stream

log = logging.getLogger("hypic_rag")
MIN_CAPACITY = 256


def capacity_for(rows: int) -> int:
    """The buffer capacity for `rows` filled rows plus room to decode: a power of two, at least 256."""
    return max(MIN_CAPACITY, 1 << rows.bit_length())


class DecodeBuffers:
    """One request's state at a fixed capacity (see the module docstring); the context `forward` takes."""

    def __init__(self, runtime, state: LeanState, capacity: int):
        self.runtime, self.capacity = runtime, capacity
        self.keys = [k.new_zeros(k.shape[0], capacity, k.shape[2]) for k in state.keys]
        self.values = [v.new_zeros(v.shape[0], capacity, v.shape[2]) for v in state.values]
        self.conv_states = {i: torch.empty_like(c) for i, c in state.conv.items()}
        self.recurrent_states = {i: torch.empty_like(r) for i, r in state.recurrent.items()}
        device = runtime.device
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.row = torch.zeros(1, dtype=torch.long, device=device)  # the next token's row and position
        self.rows = torch.arange(capacity, device=device)
        self.load(state)

    def load(self, state: LeanState) -> None:
        """Take `state` (of this model, shorter than the capacity) into these buffers, in place: its rows,
        conv columns and recurrent states. Rows past it keep what an earlier request left there, hidden
        from every query by the row mask until overwritten."""
        length = state.length
        if length >= self.capacity:
            raise ValueError(f"a state of {length} rows does not fit buffers of capacity {self.capacity}")
        for kb, vb, k, v in zip(self.keys, self.values, state.keys, state.values):
            kb[:, :length].copy_(k)
            vb[:, :length].copy_(v)
        for i, c in state.conv.items():
            self.conv_states[i].copy_(c)
        for i, r in state.recurrent.items():
            self.recurrent_states[i].copy_(r)
        self.positions, self.filled = state.positions, length
        self.row.fill_(length)

    def step(self) -> torch.Tensor:
        """Extend by `self.token` at row/position `self.row`; its next-token logits [vocab]. In place only."""
        lean = self.runtime
        hidden = lean.forward(self.token, self.row, self)
        logits = lean.logits(hidden)
        self.row.add_(1)
        return logits

    # the context interface of LeanHybrid.forward (runtime/contexts.py: ContinueFrom does the same by concatenation)
    def conv(self, w, mixed: torch.Tensor) -> torch.Tensor:
        state = self.conv_states[w.layer_idx]
        columns = conv_columns(state, mixed, self.runtime.conv_width)  # [C, K + 1]
        state.copy_(columns[:, 1:])
        return conv_new_tokens(columns, w, mixed.dtype)

    def recur(self, w, inputs) -> torch.Tensor:
        state = self.recurrent_states[w.layer_idx]
        out, final = w.recurrence.continue_from(inputs, state, 1)
        state.copy_(final)
        return out

    def attend(self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        keys, values = self.keys[index], self.values[index]
        keys.index_copy_(1, self.row, k.transpose(0, 1))
        values.index_copy_(1, self.row, v.transpose(0, 1))
        return attention(q, keys, values, (self.rows <= self.row)[None], scale)

    def state(self) -> LeanState:
        """The filled rows as a LeanState (`filled` is counted on the host by the Decoder)."""
        n = self.filled
        positions = torch.cat([self.positions, torch.arange(self.positions.shape[0], n, device=self.rows.device)])
        return LeanState([k[:, :n].clone() for k in self.keys], [v[:, :n].clone() for v in self.values], positions,
                         {i: c.clone() for i, c in self.conv_states.items()},
                         {i: r.clone() for i, r in self.recurrent_states.items()})


class DecodePool:
    """Decode buffers (and their captured steps) kept for the next request, by capacity: a request's
    Decoder takes free buffers that fit, loads its state into them and, where a graph was captured
    over them, replays it from its first step. When a Decoder is dropped (or outgrows them), its
    buffers go back; at most `per_capacity` are kept for each capacity."""

    def __init__(self, per_capacity: int = 4):
        self.free: dict[int, list[tuple]] = {}
        self.per_capacity = per_capacity
        self.lock = threading.Lock()

    def take(self, capacity: int) -> tuple | None:
        """(buffers, graph or None, the graph's logits) of that capacity, or None."""
        with self.lock:
            slots = self.free.get(capacity)
            return slots.pop() if slots else None

    def give(self, capacity: int, slot: tuple) -> None:
        with self.lock:
            slots = self.free.setdefault(capacity, [])
            if len(slots) < self.per_capacity:
                slots.append(slot)


class Decoder:
    """A request's decode steps: `step(token)` -> next-token logits (see the module docstring)."""

    def __init__(self, runtime, state: LeanState, capture: bool | None = None, pool: DecodePool | None = None,
                 forward: Callable[[DecodeBuffers], torch.Tensor] = DecodeBuffers.step):
        self.runtime = runtime
        self.capture = runtime.device.type == "cuda" if capture is None else capture
        self.pool = pool
        self.forward = forward  # a step over the buffers: DecodeBuffers.step, or the runtime's compiled one
        self._state, self._buffers = state, None  # buffers on the first step: a request may decode nothing
        self.graph, self.logits = None, None
        self.eager_steps = 0
        self._release = None  # gives the buffers (and graph) back to the pool: on drop, or when outgrown

    def _take(self, state: LeanState, capacity: int) -> DecodeBuffers:
        slot = self.pool.take(capacity) if self.pool is not None else None
        if slot is None:
            self.graph, self.logits = None, None
            buffers = DecodeBuffers(self.runtime, state, capacity)
        else:
            buffers, self.graph, self.logits = slot
            buffers.load(state)
        if self.pool is not None:
            self._hold(buffers)
        return buffers

    def _hold(self, buffers: DecodeBuffers) -> None:
        """Give `buffers` (with the graph over them, if any) back to the pool when this Decoder goes."""
        if self._release is not None:
            self._release.detach()
        self._release = weakref.finalize(self, self.pool.give, buffers.capacity, (buffers, self.graph, self.logits))

    @property
    def buffers(self) -> DecodeBuffers:
        if self._buffers is None:
            self._buffers = self._take(self._state, capacity_for(self._state.length + 1))
            self._state = None
        return self._buffers

    def step(self, token: int) -> torch.Tensor:
        b = self.buffers
        if b.filled + 1 > b.capacity:  # full: continue in buffers twice as large, captured anew
            state = b.state()
            if self._release is not None:
                self._release()  # the outgrown buffers go back now
                self._release = None
            self._buffers = b = self._take(state, capacity_for(b.capacity))
        b.token.fill_(token)
        b.filled += 1
        if self.graph is not None:
            self.graph.replay()
            return self.logits.clone()
        if self.capture and self.eager_steps >= 1:
            try:
                self._capture()
                self.graph.replay()
                return self.logits.clone()
            except Exception as error:  # noqa: BLE001 (any capture failure: keep decoding eagerly, correctly)
                log.warning("decode step not captured as a CUDA graph (%r); decoding eagerly", error)
                self.capture, self.graph = False, None
        self.eager_steps += 1
        return self._eager(b)

    @torch.no_grad()
    def _eager(self, b: DecodeBuffers) -> torch.Tensor:
        step = lambda: self.forward(b)  # noqa: E731
        return on_side_stream(step) if self.capture else step()  # on CUDA the warm-up before a capture

    @torch.no_grad()
    def _capture(self) -> None:
        b = self.buffers
        self.graph, self.logits = captured(lambda: self.forward(b))  # records only: the replay that follows runs it
        if self.pool is not None:
            self._hold(self.buffers)  # the pool keeps the graph with its buffers
