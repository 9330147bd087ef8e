"""The remote tier: entries in Redis, shared by every process and machine that points at it.

Values are the disk tier's bytes (serde: checksummed safetensors, never pickle), read back through
the same checks (checksum, size declared by the header, content key, finite floats), and as
untrusted as a file: the executor spot-checks them like disk reads. A value larger than `chunk_bytes`
(Redis refuses strings over 512 MB) is stored as chunks plus a manifest written last in one
MULTI/EXEC transaction, so a reader sees all of an entry or none of it. Redis being down, restarting
or dropping a connection mid-run is a miss (the caller recomputes, and local tiers keep working);
a value failing any check is deleted and counted, never served.

Keys: `<namespace>:e:{<content key>}` for one-chunk values; `<namespace>:m:{<key>}` (manifest:
chunks, bytes, sha256) and `<namespace>:c:{<key>}:<i>` for chunked ones; the braces are a Cluster
hash tag. Content keys already hash the model fingerprint, so stores of different models may share
a namespace. `redis+cluster://host:port` reaches a Redis Cluster through any of its nodes.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

from hypic_rag.errors import MissingDependencyError, StoreError
from hypic_rag.store.base import EntryStore
from hypic_rag.store.serde import CorruptEntryError, entry_from_bytes, entry_to_bytes
from hypic_rag.types import SegmentEntry

_MANIFEST = re.compile(rb"(\d{1,6}):(\d{1,15}):([0-9a-f]{64})")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def resolve_url(url: str) -> str:
    """`env:NAME` reads the URL (and any password in it) from the environment at connect time, so a
    store's manifest never records credentials."""
    if url.startswith("env:"):
        name = url[4:]
        value = os.environ.get(name)
        if not value:
            raise StoreError(f"the store's Redis URL comes from ${name}, which is not set; export it "
                             "(e.g. redis://host:6379/0) before opening the store")
        return value
    return url


class RedisTier(EntryStore):
    """Entries in Redis under `namespace`; reads of at most `max_value_bytes` per entry."""

    name = "redis"

    def __init__(self, url: str, namespace: str = "hypic_rag", max_value_bytes: int = 2**34,
                 chunk_bytes: int = 64 * 2**20, timeout_s: float = 5.0, compression: str | None = None,
                 compression_level: int = 3):
        try:
            import redis
        except ImportError:
            raise MissingDependencyError("the Redis tier needs redis-py: pip install redis") from None
        if not _NAMESPACE.fullmatch(namespace):
            raise StoreError(f"Redis namespace must be 1-64 letters, digits, '_', '.' or '-', got {namespace!r}")
        if not 1024 <= chunk_bytes <= 512 * 2**20:
            raise StoreError(f"redis chunk size must be between 1 KiB and 512 MiB (Redis' string limit), "
                             f"got {chunk_bytes}")
        self._errors_of = redis.exceptions.RedisError
        self.url = url
        address = resolve_url(url)
        if address.startswith(("redis+cluster://", "rediss+cluster://")):  # a Redis Cluster: any node's address
            from redis.cluster import RedisCluster

            self._client = RedisCluster.from_url(address.replace("+cluster", "", 1), socket_timeout=timeout_s,
                                                 socket_connect_timeout=timeout_s)
        else:
            self._client = redis.Redis.from_url(address, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.prefix = f"{namespace}:"
        self.max_value_bytes = max_value_bytes
        self.chunk_bytes = chunk_bytes
        self.compression, self.compression_level = compression, compression_level
        self.hits = self.misses = self.corrupt = self.errors = 0
        self.last_error: str | None = None
        self._census: tuple[float, int, int] | None = None

    # ------------------------------------------------------------------ keys
    # an entry's names share the hash tag {key}: on a Redis Cluster they live in one slot, so one
    # MULTI/EXEC and one MGET reach all of them
    def _one(self, key: str) -> str:
        return f"{self.prefix}e:{{{key}}}"

    def _manifest(self, key: str) -> str:
        return f"{self.prefix}m:{{{key}}}"

    def _chunk(self, key: str, i: int) -> str:
        return f"{self.prefix}c:{{{key}}}:{i}"

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        self.last_error = f"redis unavailable: {exc}"

    # ------------------------------------------------------------------ reads
    def _blob(self, key: str) -> bytes | None:
        one, manifest = self._client.mget(self._one(key), self._manifest(key))
        if one is not None:
            if len(one) > self.max_value_bytes:
                raise CorruptEntryError(f"redis value of {len(one)} bytes exceeds the tier's limit")
            return one
        if manifest is None:
            return None
        parsed = _MANIFEST.fullmatch(manifest)
        if parsed is None:
            raise CorruptEntryError("redis chunk manifest is malformed")
        chunks, size, digest = int(parsed[1]), int(parsed[2]), parsed[3].decode()
        if size > self.max_value_bytes or chunks != -(-size // self.chunk_bytes):
            raise CorruptEntryError(f"redis manifest declares {size} bytes in {chunks} chunks, which this tier "
                                    f"(limit {self.max_value_bytes}, chunks of {self.chunk_bytes}) refuses")
        parts = self._client.mget([self._chunk(key, i) for i in range(chunks)])
        if any(p is None for p in parts) or sum(len(p) for p in parts) != size:
            raise CorruptEntryError("redis entry's chunks are missing or of the wrong size")
        blob = b"".join(parts)
        if hashlib.sha256(blob).hexdigest() != digest:
            raise CorruptEntryError("redis entry's chunks fail the manifest's checksum")
        return blob

    def get(self, key: str) -> SegmentEntry | None:
        return self.fetch(key)[0]

    def fetch(self, key: str) -> tuple[SegmentEntry | None, bytes | None]:
        """The entry and the stored bytes it passed every check from (None, None on a miss)."""
        entry = blob = None
        try:
            blob = self._blob(key)
            entry = None if blob is None else entry_from_bytes(blob, key=key, limit=self.max_value_bytes)
        except CorruptEntryError as exc:
            self.last_error = str(exc)
            self.discard(key)
        except self._errors_of as exc:
            self._failed(exc)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry, (blob if entry is not None else None)

    def __contains__(self, key: str) -> bool:
        try:
            return bool(self._client.exists(self._one(key), self._manifest(key)))
        except self._errors_of as exc:
            self._failed(exc)
            return False

    @property
    def last_read_untrusted(self) -> bool:
        return True  # written by any process that can reach the server

    # ------------------------------------------------------------------ writes
    def put(self, key: str, entry: SegmentEntry) -> None:
        """Store `entry`; a server that cannot be reached loses this write only (counted in errors)."""
        blob = entry_to_bytes(entry, self.compression, self.compression_level)
        try:
            if len(blob) <= self.chunk_bytes:
                with self._client.pipeline(transaction=True) as tx:
                    tx.set(self._one(key), blob)
                    tx.delete(self._manifest(key))
                    tx.execute()
                return
            chunks = -(-len(blob) // self.chunk_bytes)
            with self._client.pipeline(transaction=True) as tx:  # chunks first, the manifest last, atomically
                for i in range(chunks):
                    tx.set(self._chunk(key, i), blob[i * self.chunk_bytes:(i + 1) * self.chunk_bytes])
                tx.set(self._manifest(key), f"{chunks}:{len(blob)}:{hashlib.sha256(blob).hexdigest()}".encode())
                tx.delete(self._one(key))
                tx.execute()
        except self._errors_of as exc:
            self._failed(exc)

    def discard(self, key: str) -> None:
        """Delete `key` (one-chunk value, manifest and every chunk), counted as corrupt. The manifest
        names the chunks; only a malformed one makes this scan the namespace for them."""
        self.corrupt += 1
        try:
            manifest = self._client.get(self._manifest(key))
            parsed = None if manifest is None else _MANIFEST.fullmatch(manifest)
            if parsed is not None:
                chunks = [self._chunk(key, i) for i in range(int(parsed[1]))]
            else:
                chunks = [] if manifest is None else list(
                    self._client.scan_iter(match=f"{self.prefix}c:[{{]{key}[}}]:*", count=1000))
            self._client.delete(self._one(key), self._manifest(key), *chunks)
        except self._errors_of as exc:
            self._failed(exc)

    # ------------------------------------------------------------------ inspection
    def keys(self) -> list[str]:
        """Content keys stored under this namespace (a full scan: for inspection and tests)."""
        found = set()
        try:
            for kind in ("e", "m"):
                start = len(self.prefix) + 3
                found.update(k[start:-1].decode() for k in self._client.scan_iter(match=f"{self.prefix}{kind}:*",
                                                                                   count=1000))
        except self._errors_of as exc:
            self._failed(exc)
        return sorted(found)

    def __len__(self) -> int:
        return len(self.keys())

    def _scan(self) -> tuple[int, int]:
        """(entries, bytes of values) under this namespace: one scan, value sizes asked in pipelined
        batches (not a round trip per key)."""
        entries = size = 0
        try:
            values = []
            for name in self._client.scan_iter(match=f"{self.prefix}*", count=1000):
                kind = name[len(self.prefix):len(self.prefix) + 2]
                entries += kind in (b"e:", b"m:")
                if kind in (b"e:", b"c:"):
                    values.append(name)
            for start in range(0, len(values), 1000):
                with self._client.pipeline(transaction=False) as batch:
                    for name in values[start:start + 1000]:
                        batch.strlen(name)
                    size += sum(int(n) for n in batch.execute())
        except self._errors_of as exc:
            self._failed(exc)
        return entries, size

    @property
    def used_bytes(self) -> int:
        """Bytes of the values stored under this namespace (a full scan)."""
        return self._scan()[1]

    def census(self, max_age_s: float = 30.0) -> tuple[int, int]:
        """(entries, bytes) under this namespace from a scan at most `max_age_s` old: statistics must
        not scan a shared server every time they are read."""
        now = time.monotonic()
        if self._census is None or now - self._census[0] > max_age_s:
            self._census = (now, *self._scan())
        return self._census[1], self._census[2]

    def close(self) -> None:
        self._client.close()
