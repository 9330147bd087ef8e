"""The disk tier: diskcache holding raw entry bytes only, with a store directory treated as untrusted.

A store may be shared or copied from elsewhere, so nothing read from its SQLite file is trusted:
- values: diskcache pickles non-bytes values and unpickles them on read (CVE-2025-69872). This
  tier stores bytes only and refuses every value row stored pickled or as text;
- keys: diskcache unpickles keys whose row says raw = 0; such rows are refused, never listed;
- file names: diskcache joins the row's `filename` onto the directory and reads, then deletes, that
  file. A name must have exactly the shape diskcache itself generates (`ab/cd/<28 hex>.val`) and
  resolve, with no symbolic link on the way, inside the entries directory; anything else is a
  corrupt row that is dropped without touching the file system;
- reads: a value file is read only up to the size its own header declares, and never beyond the
  tier's byte limit (a planted 12 GiB sparse file is refused after reading 48 bytes);
- settings: diskcache runs `PRAGMA <key> = <value>` for every `sqlite_*` row of its Settings table
  and hands `disk_*` rows to the Disk; the file is checked before diskcache opens it: no setting,
  table, index or trigger that diskcache does not create itself.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path

import diskcache

from hypic_rag.errors import StoreError
from hypic_rag.store.base import EntryStore
from hypic_rag.store.serde import CorruptEntryError, entry_from_bytes, entry_to_bytes, read_bounded
from hypic_rag.types import SegmentEntry

_VALUE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")
_KEY = re.compile(r"[0-9a-f]{64}")
_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KNOWN_SETTINGS = set(diskcache.DEFAULT_SETTINGS) | set(diskcache.core.METADATA)
_KNOWN_SCHEMA = {
    "Settings", "Cache", "Cache_key_raw", "Cache_expire_time", "Cache_access_time", "Cache_access_count",
    "Cache_store_time", "Cache_tag_rowid", "Settings_count_insert", "Settings_count_delete",
    "Settings_size_insert", "Settings_size_update", "Settings_size_delete", "Tag", "Tag_key",
}


class BytesOnlyDisk(diskcache.Disk):
    """A diskcache Disk that stores bytes only and reads nothing it did not write the way it writes."""

    max_read_bytes = 2**40  # set per tier (DiskTier passes its size limit)

    def store(self, value, read, key=diskcache.core.UNKNOWN):
        if not read and not isinstance(value, bytes):
            raise TypeError("the hypic_rag disk tier stores bytes only")
        return super().store(value, read, key=key)

    def get(self, key, raw):
        if not raw:
            raise CorruptEntryError("refusing to unpickle a disk-tier key")
        return super().get(key, raw)

    def _inside(self, filename) -> str | None:
        """The full path of a value file named by a row, or None when the name is not one this tier
        could have written (wrong shape, or a symbolic link anywhere below the directory)."""
        if not isinstance(filename, str) or not _VALUE_NAME.fullmatch(filename):
            return None
        root = os.path.realpath(self._directory)
        full = os.path.join(root, filename)
        return full if os.path.realpath(full) == full else None

    def fetch(self, mode, filename, value, read):
        if mode == diskcache.core.MODE_RAW:
            return super().fetch(mode, filename, value, read)
        if mode != diskcache.core.MODE_BINARY or read:
            raise CorruptEntryError(f"refusing a disk-tier value stored in diskcache mode {mode} (bytes only)")
        full = self._inside(filename)
        if full is None:
            raise CorruptEntryError(f"disk-tier row names the file {filename!r}, outside the store's layout")
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise CorruptEntryError(f"disk-tier value file {filename} is unreadable: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as reader:
            return read_bounded(reader, os.fstat(reader.fileno()).st_size, self.max_read_bytes)

    def _write(self, full_path, iterator, mode, encoding=None):
        """diskcache's write, leaving no partial file behind when it fails (disk full, quota)."""
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except BaseException:
            try:
                os.remove(full_path)
            except OSError:
                pass
            raise

    def remove(self, file_path):
        full = self._inside(file_path)
        if full is not None:  # a name outside the layout is never touched
            super().remove(os.path.relpath(full, os.path.realpath(self._directory)))


def check_cache_file(directory: Path) -> None:
    """Refuse a diskcache database holding settings or schema objects diskcache never creates (their
    values would run as PRAGMA statements or Disk arguments when diskcache opens it)."""
    path = directory / "cache.db"
    if not path.exists():
        return
    if not path.is_file() or path.is_symlink():
        raise StoreError(f"{path} is not a regular file; remove it (the disk tier is rebuilt by precompute)")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
            settings = con.execute("SELECT key, value FROM Settings").fetchall() if "Settings" in names else []
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable SQLite database ({exc}); move it away and rerun "
                         "`hypic-rag precompute` to rebuild the disk tier") from None
    unknown = sorted(names - _KNOWN_SCHEMA) + sorted(str(k) for k, _ in settings if k not in _KNOWN_SETTINGS)
    bad = [str(k) for k, v in settings if not isinstance(v, (int, float)) and not (isinstance(v, str) and _WORD.fullmatch(v))]
    if unknown or bad:
        raise StoreError(f"{path} holds objects or settings this library never writes ({', '.join(unknown + bad)}); "
                         "refusing to open it: move it away and rerun `hypic-rag precompute` to rebuild the disk tier")


def sweep_orphans(directory: Path, referenced: set[str], older_than_s: float = 600.0) -> int:
    """Remove value files no row names (left by a process killed mid-write), leaving files younger
    than `older_than_s` alone: another process may be about to commit their row."""
    removed = 0
    now = time.time()
    for path in directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
        name = path.relative_to(directory).as_posix()
        if name in referenced or not _VALUE_NAME.fullmatch(name) or path.is_symlink():
            continue
        try:
            if now - path.stat().st_mtime > older_than_s:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed


class DiskTier(EntryStore):
    """Entries as checksummed safetensors bytes in a diskcache directory, LRU-evicted past size_limit."""

    name = "disk"

    def __init__(self, directory: str | Path, size_limit_bytes: int, compression: str | None = None,
                 compression_level: int = 3):
        """compression: None, "zstd" or "lz4" for what this tier writes (it reads all of them)."""
        if size_limit_bytes <= 0:
            raise ValueError(f"disk size limit must be > 0 bytes, got {size_limit_bytes}")
        self.directory = Path(directory)
        check_cache_file(self.directory)
        settings = dict(diskcache.DEFAULT_SETTINGS)  # every setting ours, none left to the file
        settings.update(size_limit=size_limit_bytes, eviction_policy="least-recently-used", cull_limit=10)
        try:
            self._cache = diskcache.Cache(str(self.directory), disk=BytesOnlyDisk, **settings)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StoreError(f"could not open the disk tier in {self.directory}: {exc}; check that it is writable "
                             "and free space there") from None
        self._cache.disk.max_read_bytes = size_limit_bytes
        self.size_limit_bytes = size_limit_bytes
        self.compression, self.compression_level = compression, compression_level
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.last_error: str | None = None  # why the last dropped entry was refused
        referenced = {f for (f,) in self._cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        self.orphans_removed = sweep_orphans(self.directory, referenced)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def used_bytes(self) -> int:
        return int(self._cache.volume())

    def get(self, key: str) -> SegmentEntry | None:
        """The entry stored under `key`, or None; a damaged or mislabelled entry is dropped (counted
        in `corrupt`) so that the caller recomputes it."""
        try:
            blob = self._cache.get(key, default=None)
            entry = None if blob is None else entry_from_bytes(blob, key=key, limit=self.size_limit_bytes)
        except (CorruptEntryError, OSError) as exc:
            self.discard(key)
            self.last_error = str(exc)
            entry = None
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    @property
    def last_read_untrusted(self) -> bool:
        return True  # every entry here was read from a file

    def discard(self, key: str) -> None:
        """Drop a damaged entry (the row, and its file when that lies inside the layout)."""
        self.corrupt += 1
        self._cache.delete(key)  # deletes the file only when BytesOnlyDisk.remove finds it inside the layout

    def put(self, key: str, entry: SegmentEntry) -> None:
        self.put_bytes(key, entry_to_bytes(entry, self.compression, self.compression_level))

    def put_bytes(self, key: str, blob: bytes) -> None:
        """Store bytes that already passed entry_from_bytes (a Redis hit kept as it was read)."""
        try:
            self._cache.set(key, blob)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StoreError(f"could not write an entry to {self.directory}: {getattr(exc, 'strerror', None) or exc}; "
                             "free space there (or lower --disk-bytes) and rerun: nothing committed is lost") from None

    def raw(self, key: str) -> bytes | None:
        """The stored bytes (for inspection and tests)."""
        return self._cache.get(key, default=None)

    def keys(self) -> list[str]:
        """Stored keys; rows whose key is not a plain content key (pickled or foreign) are skipped."""
        rows = self._cache._sql("SELECT key FROM Cache WHERE raw = 1").fetchall()
        return [k for (k,) in rows if isinstance(k, str) and _KEY.fullmatch(k)]

    def close(self) -> None:
        self._cache.close()
