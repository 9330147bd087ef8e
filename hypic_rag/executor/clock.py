"""Wall-clock reads that mean something on an asynchronous device.

CUDA work is queued; a host timer read without a synchronize measures the queueing, not the work.
`clock(device)` synchronizes that device first (a no-op on the CPU), so the request-path splits
(load / compose / seam / prefill) add up to the TTFT on a GPU as they do on the CPU.
"""

from __future__ import annotations

import time

import torch


def clock(device: torch.device | str | None = None) -> float:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)
    return time.perf_counter()
