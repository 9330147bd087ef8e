"""Keep flash-linear-attention out of CPU-only processes.

With fla and triton installed but no CUDA device, transformers' Gated DeltaNet models pick the fla
kernels at import time and then crash ("0 active drivers"). The pure-torch references are the
correct path on CPU, so fla is blocked before any transformers modeling module is imported.
"""

from __future__ import annotations

import sys


def block_fla_without_cuda() -> bool:
    """Block ``fla`` imports when no CUDA device is present. Returns True when it was blocked."""
    try:
        import torch
    except ImportError:  # torch is a hard dependency; let the real import fail later with its own message
        return False
    if torch.cuda.is_available():
        return False
    if "fla" in sys.modules and sys.modules["fla"] is not None:
        return False  # already imported by the user on purpose; do not pull it out from under them
    sys.modules["fla"] = None
    return True
