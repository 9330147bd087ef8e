"""The one place that swaps a transformers modeling module's functions, under one process-wide lock.

Recurrence capture (precompute) and the batched seam pass replace module-level functions of a
modeling module (its chunked recurrence, its causal conv) for the length of one forward. Such a
swap is seen by every model of that module in the process, in every thread, so:
- swaps never interleave: each holds SWAP_LOCK (reentrant) from the swap to the restore, whatever
  the HypicRAG or executor that runs it (a per-instance lock let two instances restore each
  other's functions mid-forward);
- a replacement must hand a call that is not its own (a model whose layers it does not track,
  running a plain forward in another thread) to the original unchanged: see `own_call`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Iterator

SWAP_LOCK = threading.RLock()


@contextmanager
def swapped_functions(module: ModuleType, replacements: dict[str, Callable[..., Any]]) -> Iterator[dict[str, Any]]:
    """Inside the block, `module.<name>` is `replacements[name]`; yields the originals. Restored on
    exit (exceptions included) before the lock is released."""
    with SWAP_LOCK:
        originals = {name: getattr(module, name) for name in replacements}
        try:
            for name, fn in replacements.items():
                setattr(module, name, fn)
            yield originals
        finally:
            for name, fn in originals.items():
                setattr(module, name, fn)


def own_call(current) -> bool:
    """Whether a swapped function is being called from a layer the swapping code tracks, in the
    thread that tracks it (`current` is the ops.capture.LayerTrack the swapping code holds); False
    for any other model's forward, in this thread or another."""
    return bool(current) and threading.get_ident() == current.thread
