"""The captured paths' functions compiled by inductor before they are captured (`compile_graphs`).

A CUDA graph removes the launch cost of each kernel, not the kernel: replayed, a hypic request or a
decode step is still a thousand or more small kernels (norms, gates, casts, rotations, residual
adds), each a few microseconds of GPU time however little it does, which at decode and seam-pass
sizes is most of the time (bench/results/graph_replay_probe_profile.txt). torch.compile with
inductor fuses those into a few kernels around the matmuls and the recurrences (which stay the
kernels they are: runtime/kernel_ops.py makes each an opaque op of the graph), and the fused
function is what the graph then captures: the warm-up call before a capture compiles it (and
autotunes its kernels), the capture records it, replays run it.

One compiled function per captured function: `fullgraph=True` (a graph break would split the
capture's work back into eager pieces; the CPU tests check there is none) and static shapes (each
bucket and decode capacity compiles once for its shapes; dynamo keeps at most its cache limit of
them per function, eager past that). A function that fails to compile runs eagerly: same results.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

log = logging.getLogger("hypic_rag")
T = TypeVar("T")


class Compiled:
    """fn compiled on its first call (inductor, whole graph, static shapes), or fn itself once compiling fails."""

    def __init__(self, fn: Callable[..., T], what: str):
        self.fn, self.what = fn, what
        self.compiled: Callable[..., T] | None = torch.compile(fn, fullgraph=True, dynamic=False)
        self.failed = False

    def __call__(self, *args, **kwargs) -> T:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (inductor or dynamo refusing: the eager function is the same)
            log.warning("%s not compiled (%r); it runs eagerly", self.what, error)
            self.compiled, self.failed = None, True
            return self.fn(*args, **kwargs)


def maybe_compiled(fn: Callable[..., T], enabled: bool, what: str) -> Callable[..., T]:
    return Compiled(fn, what) if enabled else fn
