"""The prefix_cache baseline: exact reuse of the longest previously seen prefix of segments.

Snapshots of the whole cache are kept at segment boundaries, keyed by the chain of token ids that
led there (as vLLM/SGLang prefix caching does for hybrids, at segment rather than block
granularity). Bounded LRU by entry count.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from transformers import DynamicCache

from hypic_rag.executor import cache_ops
from hypic_rag.models.fingerprint import tokens_digest


def chain_keys(prefix_digest: str, segments: list[tuple[int, ...]]) -> list[str]:
    """keys[i] identifies the exact token sequence prefix + segments[: i + 1]."""
    keys, running = [], prefix_digest
    for seg in segments:
        running = hashlib.sha256((running + "|" + tokens_digest(seg)).encode()).hexdigest()
        keys.append(running)
    return keys


class PrefixSnapshotCache:
    """Snapshots by chain key. `copy` makes the private copy stored and handed out: a deep copy of a
    transformers cache (its tensors are extended in place), or LeanState.copy (the lean runtime
    never writes K/V in place, so a snapshot holds them by reference)."""

    def __init__(self, capacity: int, copy=cache_ops.clone_cache):
        self.capacity = capacity
        self.copy = copy
        self._snapshots: OrderedDict[str, DynamicCache] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._snapshots)

    def longest(self, keys: list[str]) -> tuple[int, DynamicCache | None]:
        """(number of leading segments covered, a private copy of that snapshot)."""
        for n in range(len(keys), 0, -1):
            snap = self._snapshots.get(keys[n - 1])
            if snap is not None:
                self._snapshots.move_to_end(keys[n - 1])
                self.hits += n
                self.misses += len(keys) - n
                return n, self.copy(snap)
        self.misses += len(keys)
        return 0, None

    def store(self, key: str, cache: DynamicCache) -> None:
        self._snapshots[key] = self.copy(cache)
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > self.capacity:
            self._snapshots.popitem(last=False)
