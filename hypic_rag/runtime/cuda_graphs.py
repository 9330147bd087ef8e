"""The two CUDA-graph steps the lean runtime's captured paths share (runtime/request_graphs.py for a
hypic request's bucket, runtime/static_decode.py for a decode step): the warm-up call before a
capture, on a side stream as torch.cuda.graph asks, and the capture itself."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def on_side_stream(fn: Callable[[], T]) -> T:
    """fn() on a fresh side stream, ordered after and before the current stream's work (the warm-up
    before a capture: Triton autotuning, cuBLAS workspaces, lazily built constants)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def captured(fn: Callable[[], T], pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """fn() recorded as a CUDA graph (nothing runs: replay it to compute) and its static outputs. The
    capture is thread-local, so another thread's CUDA work (a decode step, another request) during
    it does not invalidate it."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn()
    return graph, out
