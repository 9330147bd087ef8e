"""A request on the lean runtime: full prefill, a hypic request from cached entries, and decoding.

    runtime = LeanRuntime(model, shared_prefix)          # Qwen3.5, Qwen3-Next, Bamba, Granite-4.0-H, Falcon-H1
    logits, state = runtime.prefill(prompt_ids)          # the plain baseline: one forward
    logits, state = runtime.hypic(entries, question)     # every seam and the question in one forward
    logits, state, snapshots = runtime.prefix_fill(restored, segments, question)  # prefix-cache baseline
    entries = runtime.precompute(segments, seam, fingerprint)  # a cold request's misses, one forward
    tokens = runtime.decode(state, logits, 20)                # steps over static buffers (a CUDA graph on CUDA)

Entries are the store's SegmentEntry objects (built by the transformers path's precompute after the
same shared prefix). A request the seam chain does not cover (one segment, seams of different
widths, an empty interior) raises RequestError from `hypic`; `covers` says so beforehand, and the
executor runs such a request on the transformers path.
"""

from __future__ import annotations

from typing import Sequence

import torch

from hypic_rag.errors import RequestError, UnsupportedModelError
from hypic_rag.runtime.compiled import maybe_compiled
from hypic_rag.runtime.contexts import ContinueFrom, LeanState
from hypic_rag.runtime.prefix_runs import PrefixRuns
from hypic_rag.runtime.mamba2_hybrid import LeanMamba2Hybrid
from hypic_rag.runtime.mamba2_hybrid import MODEL_TYPES as MAMBA2_TYPES
from hypic_rag.runtime.qwen3_5 import MODEL_TYPES as QWEN3_5_TYPES
from hypic_rag.runtime.qwen3_5 import LeanQwen3_5
from hypic_rag.runtime.qwen3_next import MODEL_TYPES as QWEN3_NEXT_TYPES
from hypic_rag.runtime.qwen3_next import LeanQwen3Next
from hypic_rag.executor.prefix_anchor import prefix_anchor
from hypic_rag.runtime.request_graphs import RequestGraphs
from hypic_rag.runtime.request_inputs import Parts, RequestInputs
from hypic_rag.runtime.seam_chain import plan_request, run_planned
from hypic_rag.runtime.segment_runs import SegmentRuns
from hypic_rag.runtime.static_decode import DecodeBuffers, DecodePool, Decoder
from hypic_rag.types import SegmentEntry


LEAN_MODEL_TYPES = {**{t: LeanQwen3_5 for t in QWEN3_5_TYPES}, **{t: LeanQwen3Next for t in QWEN3_NEXT_TYPES},
                    **{t: LeanMamba2Hybrid for t in MAMBA2_TYPES}}


def lean_model(model: torch.nn.Module):
    """The lean forward over `model`'s parameters, or UnsupportedModelError naming the ported types."""
    model_type = model.config.get_text_config(decoder=True).model_type
    if model_type not in LEAN_MODEL_TYPES:
        raise UnsupportedModelError(
            f"the lean runtime covers {', '.join(sorted(LEAN_MODEL_TYPES))}; {model_type} runs on the transformers path")
    return LEAN_MODEL_TYPES[model_type](model)


class LeanRuntime:
    """`compile_graphs`: compile (inductor) what the CUDA graphs capture, a hypic request's bucket and
    a decode step, before capturing it (runtime/compiled.py); on CPU, decode steps run compiled. A
    model whose experts run with transformers' "eager" implementation is neither captured nor
    compiled (lean_model.experts_capture_safe; read when the runtime is built)."""

    def __init__(self, model: torch.nn.Module, shared_prefix: Sequence[int] = (), compile_graphs: bool = False):
        self.lean = lean_model(model)
        self.device = self.lean.device
        self.shared_prefix = tuple(shared_prefix)
        self.prefix_state = LeanState.empty(self.lean)
        if self.shared_prefix:
            self._extend(self.prefix_state, list(self.shared_prefix), 0)
        # CUDA graphs (and compiling what they capture) where the model allows: not with experts whose
        # routing synchronises (lean_model.experts_capture_safe), whose requests then run eagerly
        self.captures = self.device.type == "cuda" and self.lean.capture_safe
        self.compile_graphs = compile_graphs and self.lean.capture_safe
        # what the graphs capture, compiled or not: one function each for every bucket and decoder, so a
        # compile that fails is tried once, not again for each bucket or request
        self.planned = maybe_compiled(run_planned, self.compile_graphs, "hypic request", self.device)
        self.decode_step = maybe_compiled(DecodeBuffers.step, self.compile_graphs, "decode step", self.device)
        self.graphs = RequestGraphs(self) if self.captures else None  # hypic requests' CUDA graphs
        self.decode_pool = DecodePool() if self.captures else None  # captured decode steps, reused across requests

    def _extend(self, state: LeanState, ids: Sequence[int], start: int) -> torch.Tensor:
        positions = torch.arange(start, start + len(ids), device=self.device)
        context = ContinueFrom(self.lean, state, positions)
        hidden = self.lean.forward(torch.tensor(list(ids), device=self.device), positions, context)
        context.finish()
        return self.lean.logits(hidden)

    @torch.no_grad()
    def prefill(self, ids: Sequence[int]) -> tuple[torch.Tensor, LeanState]:
        """Everything after the shared prefix in one forward: (next-token logits [vocab], state)."""
        state = self.prefix_state.copy()
        return self._extend(state, ids, len(self.shared_prefix)), state

    def covers(self, entries: Sequence[SegmentEntry], question: Sequence[int]) -> bool:
        if not entries or not question:
            return False
        width = entries[0].seam_tokens
        return width > 0 and all(e.seam_tokens == width and e.interior_length > 0 for e in entries)

    def anchored(self, entries: Sequence[SegmentEntry]) -> list[SegmentEntry]:
        """[prefix anchor, *entries]: the layout plan_request and SeamChain take (executor/prefix_anchor.py)."""
        prefix = self.prefix_state
        return [prefix_anchor(list(entries), prefix.recurrent.get, prefix.conv.get), *entries]

    @torch.no_grad()
    def hypic(self, entries: Sequence[SegmentEntry], question: Sequence[int],
              run_width: int | None = None, graphs: bool = True) -> tuple[torch.Tensor, LeanState]:
        """The hypic rung: every seam recomputed with its true context (segment 0's from the shared
        prefix, which makes it exact) and every interior composed, then the question; (next-token
        logits, state) after one forward. On CUDA (unless `graphs` is False) that forward is replayed
        as its shape bucket's CUDA graph (runtime/request_graphs.py). `run_width` pads every run of an
        eager request to a bucket's width (same result)."""
        if not self.covers(entries, question):
            raise RequestError("the lean seam chain needs segments that share one seam width and each have an "
                               "interior, and a question; run this request on the transformers path")
        entries = self.anchored(entries)
        if graphs and self.graphs is not None:
            return self.graphs.run(entries, list(question))
        plan = plan_request(entries, list(question), len(self.shared_prefix), self.lean.conv_width, self.device,
                            run_width)
        return run_planned(self.lean, plan, RequestInputs.gather(Parts.of(self.lean, entries)), self.prefix_state)

    @torch.no_grad()
    def precompute(self, segments: Sequence[Sequence[int]], seam: int, fingerprint: str) -> list[SegmentEntry]:
        """Entries of `segments` (any lengths, at least one token each), each after the shared prefix,
        from one forward over all of them (runtime/segment_runs.py): a cold request's misses."""
        context = SegmentRuns(self.lean, self.prefix_state, [tuple(int(t) for t in s) for s in segments], seam)
        self.lean.forward(context.ids, context.positions, context)
        return context.entries(fingerprint)

    @torch.no_grad()
    def prefix_fill(self, state: LeanState, segments: Sequence[Sequence[int]],
                    question: Sequence[int]) -> tuple[torch.Tensor, LeanState, list[LeanState]]:
        """The prefix-cache baseline after a restored `state` (the longest seen prefix, or the shared
        prefix's): the uncovered `segments` and the question in one forward. Returns (logits, state,
        a snapshot at the end of each segment)."""
        widths = [len(s) for s in segments] + [len(question)]
        start = state.length
        positions = torch.arange(start, start + sum(widths), device=self.device)
        context = PrefixRuns(self.lean, state, positions, widths)
        ids = torch.tensor([t for s in segments for t in s] + list(question), device=self.device)
        hidden = self.lean.forward(ids, positions, context)
        return self.lean.logits(hidden), state, context.snapshots()

    @torch.no_grad()
    def step(self, state: LeanState, token: int) -> torch.Tensor:
        """Extend `state` by one token at the next position (its length: a state holds every position
        from 0 once), returning that token's next-token logits."""
        return self._extend(state, [token], state.length)

    def decoder(self, state: LeanState, capture: bool | None = None) -> Decoder:
        """Decode steps after `state` over preallocated buffers, captured as a CUDA graph on CUDA
        (runtime/static_decode.py); `state` itself is left as it is."""
        return Decoder(self.lean, state, self.captures if capture is None else capture, self.decode_pool,
                       self.decode_step)

    def decode(self, state: LeanState, logits: torch.Tensor, max_new_tokens: int,
               eos_ids: frozenset[int] = frozenset()) -> list[int]:
        """Greedy tokens from `logits` on, after `state` (stops after an EOS, which is kept)."""
        tokens: list[int] = []
        decoder = self.decoder(state)
        for step in range(max_new_tokens):
            token = int(torch.argmax(logits))
            tokens.append(token)
            if token in eos_ids or step == max_new_tokens - 1:
                break
            logits = decoder.step(token)
        return tokens
