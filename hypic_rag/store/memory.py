"""An in-process LRU tier bounded in bytes (on the GPU or the CPU)."""

from __future__ import annotations

from collections import OrderedDict

import torch

from hypic_rag.errors import RequestError
from hypic_rag.store.base import EntryStore
from hypic_rag.types import AttentionLayerEntry, LinearLayerEntry, SegmentEntry


def entry_to(entry: SegmentEntry, device: torch.device | str) -> SegmentEntry:
    """The same entry with every tensor on `device`."""

    def move(t):
        return None if t is None else t.to(device)

    return SegmentEntry(
        token_ids=entry.token_ids,
        seam_tokens=entry.seam_tokens,
        fingerprint=entry.fingerprint,
        linear=tuple(
            LinearLayerEntry(l.layer_idx, move(l.end_state), move(l.interior_state), move(l.interior_operator), move(l.conv_tail))
            for l in entry.linear
        ),
        attention=tuple(AttentionLayerEntry(a.layer_idx, move(a.keys), move(a.values)) for a in entry.attention),
    )


def on_device(entry: SegmentEntry, device: torch.device | str) -> SegmentEntry:
    """`entry` itself when its tensors already live on `device`, else a copy moved there (a store
    tier on another device, e.g. host memory feeding a CUDA model)."""
    probe = next(t for t in [*(a.keys for a in entry.attention),
                             *(x for l in entry.linear for x in (l.conv_tail, l.end_state)), torch.empty(0)]
                 if t is not None).device
    want = torch.device(device)
    same = probe.type == want.type and (want.index is None or probe.index in (None, want.index))
    return entry if same else entry_to(entry, device)


class MemoryTier(EntryStore):
    """LRU over whole entries, holding at most `capacity_bytes` of tensors on `device`.

    `insert` returns the (key, entry) pairs it pushed out, for a tier below to take.
    """

    def __init__(self, capacity_bytes: int, device: torch.device | str = "cpu", name: str = "cpu"):
        if capacity_bytes < 0:
            raise RequestError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.device = torch.device(device)
        self.name = name
        self._entries: OrderedDict[str, SegmentEntry] = OrderedDict()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> SegmentEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def peek(self, key: str) -> SegmentEntry | None:
        """The entry as this tier holds it (on its device), without touching order or counters."""
        return self._entries.get(key)

    def put(self, key: str, entry: SegmentEntry) -> None:
        """Insert, evicting least-recently-used entries (EntryStore's contract: they are dropped)."""
        self.insert(key, entry)

    def insert(self, key: str, entry: SegmentEntry) -> list[tuple[str, SegmentEntry]]:
        """Insert; returns the entries evicted to make room (the entry itself if it can never fit), for
        a tier below to take."""
        if key in self._entries:
            self.used_bytes -= self._entries.pop(key).nbytes
        size = entry.nbytes
        if size > self.capacity_bytes:
            return [(key, entry)]
        evicted = []
        while self.used_bytes + size > self.capacity_bytes and self._entries:
            old_key, old = self._entries.popitem(last=False)
            self.used_bytes -= old.nbytes
            evicted.append((old_key, old))
        self._entries[key] = entry_to(entry, self.device)
        self.used_bytes += size
        return evicted

    def discard(self, key: str) -> None:
        self.pop(key)

    def pop(self, key: str) -> SegmentEntry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.used_bytes -= entry.nbytes
        return entry
