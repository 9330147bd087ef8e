"""The disk tier: diskcache holding raw entry bytes only.

diskcache pickles non-bytes values and unpickles them on read (CVE-2025-69872). This tier's Disk
refuses to store anything but bytes and refuses to read back anything stored pickled, so a planted
pickle is treated as a corrupt entry, never loaded.
"""

from __future__ import annotations

from pathlib import Path

import diskcache

from hypic_rag.store.serde import CorruptEntryError, entry_from_bytes, entry_to_bytes
from hypic_rag.types import SegmentEntry


class BytesOnlyDisk(diskcache.Disk):
    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not read and not isinstance(value, bytes):
            raise TypeError("the hypic_rag disk tier stores bytes only")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_PICKLE:
            raise CorruptEntryError("refusing to unpickle a disk-tier value")
        return super().fetch(mode, filename, value, read)


class DiskTier:
    """Entries as checksummed safetensors bytes in a diskcache directory, LRU-evicted past size_limit."""

    name = "disk"

    def __init__(self, directory: str | Path, size_limit_bytes: int):
        if size_limit_bytes <= 0:
            raise ValueError(f"disk size limit must be > 0 bytes, got {size_limit_bytes}")
        self.directory = Path(directory)
        self._cache = diskcache.Cache(
            str(self.directory), size_limit=size_limit_bytes, eviction_policy="least-recently-used",
            disk=BytesOnlyDisk, cull_limit=10,
        )
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def used_bytes(self) -> int:
        return int(self._cache.volume())

    def get(self, key: str) -> SegmentEntry | None:
        try:
            blob = self._cache.get(key, default=None)
            entry = None if blob is None else entry_from_bytes(blob)
        except CorruptEntryError:
            self.corrupt += 1
            self._cache.delete(key)
            entry = None
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, entry: SegmentEntry) -> None:
        self._cache.set(key, entry_to_bytes(entry))

    def raw(self, key: str) -> bytes | None:
        """The stored bytes (for inspection and tests)."""
        return self._cache.get(key, default=None)

    def keys(self) -> list[str]:
        return list(self._cache.iterkeys())

    def close(self) -> None:
        self._cache.close()
