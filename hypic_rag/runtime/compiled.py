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

Eagerly, the seam chain's fp32 products run on TF32 tensor cores on CUDA inside
`scan.tensor_core_fp32` blocks, a process-wide setting dynamo cannot trace. Compiled, the blocks
do nothing and the whole call runs inside one such block: every fp32 matrix product of the
function may use TF32. In a bf16 model those are the chain's compositions and output corrections
and the seam attention's scores, products of the entries' own precision (fla's chunk kernels
multiply in TF32); in an fp32 model on CUDA, every product.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

import torch

from hypic_rag.runtime.scan import tensor_core_fp32

log = logging.getLogger("hypic_rag")
T = TypeVar("T")


class Compiled:
    """fn compiled on its first call (inductor, whole graph, static shapes), or fn itself once compiling fails."""

    def __init__(self, fn: Callable[..., T], what: str, device: torch.device):
        self.fn, self.what, self.device = fn, what, device
        self.compiled: Callable[..., T] | None = torch.compile(fn, fullgraph=True, dynamic=False)
        self.failed = False

    def __call__(self, *args, **kwargs) -> T:
        if self.compiled is None:
            return self.fn(*args, **kwargs)
        try:
            with tensor_core_fp32(self.device):  # see the module docstring
                return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (inductor or dynamo refusing: the eager function is the same)
            log.warning("%s not compiled (%r); it runs eagerly", self.what, error)
            self.compiled, self.failed = None, True
            return self.fn(*args, **kwargs)


def maybe_compiled(fn: Callable[..., T], enabled: bool, what: str, device: torch.device) -> Callable[..., T]:
    return Compiled(fn, what, device) if enabled else fn
