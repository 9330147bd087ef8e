"""Tiers composed into one read-through store: device LRU -> host LRU -> disk -> Redis (optional).

Reads look top-down and promote a hit into the top tier (a Redis hit into the local disk too);
entries evicted from a tier are demoted to the next one down (the disk tier and Redis evict by
themselves). Writes go to the top tier and, write-through, to disk and Redis, so a precompute run's
work survives the process and reaches every process sharing the Redis tier. Counters are monotonic
per tier.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from hypic_rag.errors import RequestError
from hypic_rag.index.vector_index import IndexConfig
from hypic_rag.store.base import EntryStore
from hypic_rag.store.compression import check_codec
from hypic_rag.store.disk import DiskTier
from hypic_rag.store.memory import MemoryTier
from hypic_rag.store.redis_tier import RedisTier
from hypic_rag.types import SegmentEntry


@dataclass(frozen=True)
class StoreConfig:
    """Byte budgets per tier (device_bytes lives on CUDA when present, otherwise on the CPU), the
    shared Redis tier, and which FAISS index type serves the segment embeddings (IndexConfig)."""

    device_bytes: int = 512 * 2**20
    host_bytes: int = 2 * 2**30
    disk_bytes: int = 32 * 2**30
    redis_url: str | None = None  # a shared remote tier below disk: redis://host:port/db, or env:VAR to read it there
    redis_namespace: str = "hypic_rag"
    redis_chunk_bytes: int = 64 * 2**20
    compression: str | None = None  # zstd or lz4 for what the disk and Redis tiers write (they read all)
    compression_level: int = 3  # zstd's level (lz4 runs its fast mode)
    index: IndexConfig = IndexConfig()

    def __post_init__(self) -> None:
        if isinstance(self.index, dict):  # as a manifest stores it
            known = {f.name for f in fields(IndexConfig)}
            unknown = sorted(set(self.index) - known)
            if unknown:
                raise RequestError(f"unknown index setting(s) {unknown}; IndexConfig takes {sorted(known)}")
            object.__setattr__(self, "index", IndexConfig(**self.index))
        check_codec(self.compression)
        if not isinstance(self.compression_level, int) or not 1 <= self.compression_level <= 19:
            raise RequestError(f"compression_level must be an integer from 1 to 19, got {self.compression_level!r}")
        if not isinstance(self.index, IndexConfig):
            raise RequestError(f"index must be an IndexConfig, got {type(self.index).__name__}")
        for name in ("device_bytes", "host_bytes", "disk_bytes", "redis_chunk_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise RequestError(f"{name} must be an integer number of bytes >= 0, got {value!r}")
        if self.disk_bytes == 0:
            raise RequestError("disk_bytes must be > 0: the disk tier is the store of record")
        if self.redis_url is not None and not (isinstance(self.redis_url, str) and self.redis_url.startswith(
                ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://", "env:"))):
            raise RequestError(f"redis_url must be a redis://, rediss://, unix:// or redis+cluster:// URL, or "
                               f"env:VAR naming one; got {self.redis_url!r}")


@dataclass(frozen=True)
class TierStats:
    name: str
    entries: int
    used_bytes: int
    hits: int
    misses: int


class TieredStore(EntryStore):
    def __init__(self, directory: str | Path, config: StoreConfig | None = None, device: str | None = None):
        self.config = config or StoreConfig()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.memory_tiers = [
            MemoryTier(self.config.device_bytes, device=device, name=f"device:{device}"),
            MemoryTier(self.config.host_bytes, device="cpu", name="host"),
        ]
        codec = dict(compression=self.config.compression, compression_level=self.config.compression_level)
        self.disk = DiskTier(Path(directory) / "entries", self.config.disk_bytes, **codec)
        self.remote = None if self.config.redis_url is None else RedisTier(
            self.config.redis_url, self.config.redis_namespace, max_value_bytes=self.config.disk_bytes,
            chunk_bytes=self.config.redis_chunk_bytes, **codec)
        self.last_hit_tier: str | None = None

    def __contains__(self, key: str) -> bool:
        return (any(key in t for t in self.memory_tiers) or key in self.disk
                or (self.remote is not None and key in self.remote))

    def _insert(self, level: int, key: str, entry: SegmentEntry) -> None:
        """Put into memory tier `level`, cascading evictions downwards (the last memory tier drops
        its evictions: they are already on disk)."""
        pending = [(key, entry)]
        for tier in self.memory_tiers[level:]:
            demoted = []
            for k, e in pending:
                demoted += tier.insert(k, e)
            pending = demoted
            if not pending:
                return

    def get(self, key: str) -> SegmentEntry | None:
        for level, tier in enumerate(self.memory_tiers):
            entry = tier.get(key)
            if entry is not None:
                self.last_hit_tier = tier.name
                if level > 0:
                    tier.pop(key)
                    entry = self._promote(key, entry)
                return entry
        entry = self.disk.get(key)
        self.last_hit_tier = "disk" if entry is not None else None
        if entry is None and self.remote is not None:
            entry, blob = self.remote.fetch(key)
            if entry is not None:
                self.last_hit_tier = "redis"
                self.disk.put_bytes(key, blob)  # the bytes just checked: no second serialisation
        if entry is not None:
            entry = self._promote(key, entry)
        return entry

    def _promote(self, key: str, entry: SegmentEntry) -> SegmentEntry:
        """Insert into the top tier and return the copy a tier now holds (on that tier's device), so a
        read from the host or disk hands back a device-resident entry whenever the top tier kept it."""
        self._insert(0, key, entry)
        for tier in self.memory_tiers:
            held = tier.peek(key)
            if held is not None:
                return held
        return entry

    @property
    def last_read_untrusted(self) -> bool:
        return self.last_hit_tier in ("disk", "redis")

    def retire(self, key: str) -> None:
        """Forget an entry no segment of this store uses any more, in this store's own tiers. The shared
        Redis tier keeps it: other stores may hold the same content (it evicts by itself)."""
        for tier in self.memory_tiers:
            tier.pop(key)
        self.disk.discard(key)

    def discard(self, key: str) -> None:
        """Drop a damaged or foreign entry from every tier, the shared one included."""
        for tier in self.memory_tiers:
            tier.pop(key)
        self.disk.discard(key)
        if self.remote is not None:
            self.remote.discard(key)

    def __len__(self) -> int:
        """Entries stored (every entry is written through to the disk tier)."""
        return len(self.disk)

    def put(self, key: str, entry: SegmentEntry) -> None:
        self.disk.put(key, entry)
        if self.remote is not None:
            self.remote.put(key, entry)
        self._insert(0, key, entry)

    def hits(self) -> dict[str, int]:
        """Each tier's hit counter by name: what a request's tier hits are measured against, without
        counting entries or bytes (a disk COUNT, a scan of a shared Redis)."""
        tiers = [*self.memory_tiers, self.disk] + ([self.remote] if self.remote is not None else [])
        return {t.name: t.hits for t in tiers}

    def stats(self) -> list[TierStats]:
        rows = [TierStats(t.name, len(t), t.used_bytes, t.hits, t.misses) for t in self.memory_tiers]
        rows.append(TierStats("disk", len(self.disk), self.disk.used_bytes, self.disk.hits, self.disk.misses))
        if self.remote is not None:
            entries, used = self.remote.census()
            rows.append(TierStats("redis", entries, used, self.remote.hits, self.remote.misses))
        return rows

    def close(self) -> None:
        self.disk.close()
        if self.remote is not None:
            self.remote.close()
