"""Counting the kernel-launching aten ops a piece of work dispatches (TorchDispatchMode).

On a GPU a small request costs about its kernel launches, so the count is the CPU-measurable
proxy for GPU time at small batch: view and metadata ops (slice, view, transpose, expand...) and
bare allocations (empty, empty_like, empty_strided) launch nothing and are not counted. Tests bound
it; bench/lean_ttft.py reports it.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ALLOCATIONS = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_like.default,
               torch.ops.aten.empty_strided.default}  # memory from the allocator: no kernel


class KernelOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view and func not in ALLOCATIONS
        return func(*args, **(kwargs or {}))


def kernel_ops(fn: Callable[[], object]) -> int:
    """The kernel-launching aten ops `fn()` dispatches."""
    with KernelOps() as ops:
        fn()
    return ops.count


def compiled_launches(fn: Callable, *args) -> tuple[int, object]:
    """(kernel calls per call, fn's output) of `fn(*args)` compiled by inductor (whole graph, static
    shapes): the calls in the wrapper code inductor generates, fused kernels (Triton on CUDA, C++ on
    CPU) and extern ones (matmuls, attention, convolutions, the recurrence ops) alike. The compiled
    counterpart of `kernel_ops`: a dispatch mode cannot watch a compiled function run."""
    from torch._inductor.utils import run_and_get_code

    output, codes = run_and_get_code(torch.compile(fn, fullgraph=True, dynamic=False), *args)
    return sum(_calls(code) for code in codes), output


_CALL = re.compile(r"^\s+(?:\w+ = )?(?:cpp_fused\w*|triton_\w+\.run|extern_kernels\.\w+|torch\.ops\.[\w.]+)\(")


def _calls(code: str) -> int:
    """The kernel calls in the body of a generated module's `call`."""
    body = code[code.index("    def call(self, args):"):]
    end = re.search(r"^\S|^    def ", body[1:], re.M)  # up to the next method or top-level statement
    return sum(bool(_CALL.match(line)) for line in (body if end is None else body[:end.start() + 1]).splitlines())
