"""A hypic request's planned part replayed as one CUDA graph, one graph per shape bucket.

Eagerly a planned request (runtime/seam_chain.py: run_planned) costs about one kernel launch per
op, a thousand or more on a 24-layer model: on a GPU the host, not the GPU, sets its pace. A graph
replays the same kernels with one launch, but only over the same tensors with the same shapes. So
requests are grouped into buckets:
  - the number of segments, exactly (a retriever returns a fixed top-k: few distinct counts);
  - the question's length, rounded up to a power of two (at least 16);
  - the key/value rows of the entries together, rounded up to a multiple of a quarter of the power
    of two at or below them (at most 25% padding; at least 256).
Each bucket owns buffers of its shapes: the gathered entry tensors (runtime/request_inputs.py) and
the plan's one packed index tensor. A request is planned padded to its bucket (padding tokens and
key rows sit one position after every real one, where the position-causal mask hides them from
every real query, and padded run slots neither decay nor write), copied into the buffers, and the
bucket's graph replayed. The first request of a bucket runs eagerly over the buffers (the warm-up:
Triton autotuning, cuBLAS workspaces), the second captures the graph, later ones replay it; a
capture that fails leaves the bucket eager. Buckets are kept least-recently-used, at most
`max_buckets` and, together, at most `max_bytes` of input buffers (on CUDA a fifth of the device by
default: at 32 segments of the 1.4B bench model one bucket holds about 2.5 GB of entry tensors),
their graphs sharing one memory pool.

One lock covers a request from copying its inputs in to copying its results out, so concurrent
requests never see each other's buffers: the logits and the state a request returns are its own
copies (the state holds only real rows, ready for decoding).

Without capture (on a CPU, or `capture=False`), a bucket runs the same padded code eagerly: that
is what the CPU tests check against the unpadded request. With the runtime's `compile_graphs`, the
function a bucket runs is compiled by inductor before its capture (runtime/compiled.py; one compiled
function for every bucket, dynamo compiling it once per bucket's shapes).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from hypic_rag.runtime.contexts import LeanState
from hypic_rag.runtime.cuda_graphs import captured, on_side_stream
from hypic_rag.runtime.request_inputs import Parts, RequestInputs
from hypic_rag.runtime.seam_chain import SeamPlan, plan_request
from hypic_rag.types import SegmentEntry

log = logging.getLogger("hypic_rag")
MIN_QUESTION, MIN_ROWS = 16, 256


def question_bucket(tokens: int) -> int:
    return max(MIN_QUESTION, 1 << (tokens - 1).bit_length())


def rows_bucket(rows: int) -> int:
    """`rows` rounded up to a multiple of a quarter of the power of two at or below it (at most 25%
    more; at least MIN_ROWS)."""
    if rows <= MIN_ROWS:
        return MIN_ROWS
    quarter = (1 << (rows.bit_length() - 1)) // 4
    return -(-rows // quarter) * quarter


@dataclass(frozen=True)
class Bucket:
    seams: int  # segments (each has a seam; the anchor has none)
    seam_width: int
    question: int  # question tokens, padded
    rows: int  # key/value rows of the entries together, padded
    signature: tuple  # the entry tensors' shapes, dtypes and devices (request_inputs.Parts.signature)

    @property
    def tokens(self) -> int:
        return self.seams * self.seam_width + self.question

    @property
    def kept(self) -> int:
        return self.rows - self.seams * self.seam_width

    @property
    def run_width(self) -> int:
        return max(self.seam_width, self.question)


class BucketedRequest:
    """One bucket's buffers and graph (see the module docstring)."""

    def __init__(self, runtime, bucket: Bucket, parts: Parts, plan: SeamPlan, capture: bool, pool=None):
        self.runtime, self.bucket, self.capture, self.pool = runtime, bucket, capture, pool
        self.inputs = RequestInputs.buffers(parts, bucket.rows)
        self.plan = plan.on(torch.zeros_like(plan.packed, device=runtime.device))
        self.graph: torch.cuda.CUDAGraph | None = None
        self.runs = 0  # requests served, eagerly or replayed
        self.out: tuple[torch.Tensor, LeanState] | None = None
        self.forward = runtime.planned  # run_planned, compiled with the runtime's compile_graphs

    def load(self, parts: Parts, plan: SeamPlan) -> None:
        self.inputs.load(parts)
        self.plan.packed.copy_(plan.packed, non_blocking=True)

    def _eager(self) -> tuple[torch.Tensor, LeanState]:
        return self.forward(self.runtime.lean, self.plan, self.inputs, self.runtime.prefix_state)

    def run(self) -> tuple[torch.Tensor, LeanState]:
        """The loaded request's (logits, state), over the buffers: eager, captured or replayed."""
        self.runs += 1
        if self.graph is not None:
            self.graph.replay()
            return self.out
        if not self.capture:
            return self._eager()
        if self.runs == 1:  # the warm-up before a capture
            return on_side_stream(self._eager)
        try:
            graph, out = captured(self._eager, self.pool)
        except Exception as error:  # noqa: BLE001  (a capture can fail on what a kernel does; eager still works)
            log.warning("hypic request bucket %s stays eager: CUDA graph capture failed (%r)", self.bucket, error)
            self.capture = False
            return self._eager()
        self.graph, self.out = graph, out
        graph.replay()
        return out


def real_state(state: LeanState, prefix: int, plan: SeamPlan) -> LeanState:
    """A request's own copy of a padded chain's `state`, its padding rows left out: rows are
    [prefix, kept (padded), new tokens (padded)]."""
    kept_end, new_start = prefix + plan.real_kept, prefix + plan.kept_rows.shape[0]
    new_end = new_start + plan.real_tokens

    def rows(t: torch.Tensor, dim: int) -> torch.Tensor:
        return torch.cat([t.narrow(dim, 0, kept_end), t.narrow(dim, new_start, new_end - new_start)], dim)

    return LeanState([rows(k, 1) for k in state.keys], [rows(v, 1) for v in state.values], rows(state.positions, 0),
                     {i: c.clone() for i, c in state.conv.items()}, {i: r.clone() for i, r in state.recurrent.items()})


class RequestGraphs:
    """The buckets of one lean runtime (runtime/lean_request.py: LeanRuntime.hypic goes through it on CUDA)."""

    def __init__(self, runtime, capture: bool | None = None, max_buckets: int = 8, max_bytes: int | None = None):
        if max_buckets < 1:
            raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
        self.runtime = runtime
        self.capture = runtime.device.type == "cuda" if capture is None else capture
        self.max_buckets = max_buckets
        if max_bytes is None and runtime.device.type == "cuda":  # a fifth of the device for buffers
            max_bytes = torch.cuda.get_device_properties(runtime.device).total_memory // 5
        self.max_bytes = max_bytes  # the buckets' input buffers together (None: no bound)
        self.buckets: OrderedDict[Bucket, BucketedRequest] = OrderedDict()
        self.lock = threading.Lock()
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None

    def nbytes(self) -> int:
        """The bytes of every bucket's input buffers (each holds a request's gathered entry tensors)."""
        return sum(request.inputs.nbytes() for request in self.buckets.values())

    def bucket_of(self, entries: list[SegmentEntry], question: list[int], parts: Parts) -> Bucket:
        return Bucket(len(entries) - 1, entries[1].seam_tokens, question_bucket(len(question)),
                      rows_bucket(parts.length), parts.signature())

    @torch.no_grad()
    def run(self, entries: list[SegmentEntry], question: list[int]) -> tuple[torch.Tensor, LeanState]:
        """(next-token logits, state) of a hypic request whose `entries` are anchored ([prefix anchor,
        segment 0, ...]) and covered by the lean seam chain (LeanRuntime.covers)."""
        rt = self.runtime
        parts = Parts.of(rt.lean, entries)
        bucket = self.bucket_of(entries, question, parts)
        plan = plan_request(entries, list(question), len(rt.shared_prefix), rt.lean.conv_width,
                            torch.device("cpu"), bucket.run_width, bucket.tokens, bucket.kept)
        if self.capture:
            plan = plan.on(plan.packed.pin_memory())
        with self.lock:
            request = self.buckets.get(bucket)
            if request is None:
                request = BucketedRequest(rt, bucket, parts, plan, self.capture, self.pool)
                self.buckets[bucket] = request
                while len(self.buckets) > self.max_buckets or (
                        len(self.buckets) > 1 and self.max_bytes is not None and self.nbytes() > self.max_bytes):
                    self.buckets.popitem(last=False)  # the least recently used; never the one just made
            self.buckets.move_to_end(bucket)
            request.load(parts, plan)
            logits, state = request.run()
            return logits.clone(), real_state(state, rt.prefix_state.length, plan)
