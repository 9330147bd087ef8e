"""Counting the kernel-launching aten ops a piece of work dispatches (TorchDispatchMode).

On a GPU a small request costs about its kernel launches, so the count is the CPU-measurable
proxy for GPU time at small batch: view and metadata ops (slice, view, transpose, expand...) and
bare allocations (empty, empty_like, empty_strided) launch nothing and are not counted. Tests bound
it; bench/lean_ttft.py reports it.
"""

from __future__ import annotations

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
