"""zstd and lz4 compression of stored entries (real zstandard, real lz4, real diskcache, real
redis-server): round trips, mixed stores, and frames that lie about their sizes."""

import pytest

from conftest import get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.errors import CorruptEntryError, RequestError
from hypic_rag.store.compression import FRAME_HEADER, MAGIC_Z, compress, decompress
from hypic_rag.store.disk import DiskTier
from hypic_rag.store.serde import entry_from_bytes, entry_to_bytes
from hypic_rag.store.tiered import StoreConfig, TieredStore
from test_store import assert_same

pytest.importorskip("zstandard")
pytest.importorskip("lz4")
CODECS = ["zstd", "lz4"]


def an_entry(seed=0, length=40):
    ex = HypicExecutor(get_model("qwen3_5"))
    (ids,) = random_ids([length], seed=seed)
    return ex.key_of(tuple(ids)), ex.precompute(ids)


@pytest.mark.parametrize("codec", CODECS)
def test_a_compressed_entry_round_trips_bit_for_bit(codec):
    key, entry = an_entry()
    blob = entry_to_bytes(entry, codec)
    assert blob.startswith(MAGIC_Z) and decompress(blob, 2**30) == entry_to_bytes(entry)
    assert_same(entry_from_bytes(blob, key=key), entry)


@pytest.mark.parametrize("codec", CODECS)
def test_a_disk_tier_reads_what_any_setting_wrote(tmp_path, codec):
    (k1, e1), (k2, e2) = an_entry(1), an_entry(2)
    DiskTier(tmp_path, 2**30).put(k1, e1)  # written plain
    disk = DiskTier(tmp_path, 2**30, compression=codec)
    disk.put(k2, e2)  # written compressed
    assert disk.raw(k2).startswith(MAGIC_Z) and not disk.raw(k1).startswith(MAGIC_Z)
    assert_same(disk.get(k1), e1)
    assert_same(disk.get(k2), e2)
    assert disk.corrupt == 0


@pytest.mark.parametrize("codec", CODECS)
def test_frames_that_lie_are_refused_before_or_while_decompressing(codec):
    _, entry = an_entry()
    blob = entry_to_bytes(entry, codec)
    raw = len(entry_to_bytes(entry))

    def with_sizes(raw_size, packed_size, body=blob[FRAME_HEADER:]):
        return blob[:len(MAGIC_Z) + 1] + raw_size.to_bytes(8, "little") + packed_size.to_bytes(8, "little") + body

    with pytest.raises(CorruptEntryError, match="more than the limit"):
        decompress(with_sizes(2**50, len(blob) - FRAME_HEADER), limit=2**30)  # a bomb declared up front
    with pytest.raises(CorruptEntryError, match="decompresses to more than the"):
        decompress(with_sizes(raw // 2, len(blob) - FRAME_HEADER), limit=2**30)  # output stops at the declared size
    with pytest.raises(CorruptEntryError, match="compressed bytes but declares"):
        decompress(with_sizes(raw, len(blob)), limit=2**30)
    damaged = bytearray(blob)
    damaged[FRAME_HEADER + 40: FRAME_HEADER + 80] = bytes(40)
    with pytest.raises(CorruptEntryError):
        entry_from_bytes(bytes(damaged))  # the codec's own check, or serde's checksum after it
    with pytest.raises(CorruptEntryError, match="unknown compression codec"):
        decompress(blob[:len(MAGIC_Z)] + b"\x09" + blob[len(MAGIC_Z) + 1:], limit=2**30)


def test_a_real_bomb_stops_at_the_declared_size():
    bomb = compress(b"\0" * (64 * 2**20), "zstd")  # 64 MiB of zeros in a few KiB
    lying = bomb[:len(MAGIC_Z) + 1] + (1024).to_bytes(8, "little") + bomb[len(MAGIC_Z) + 9:]
    with pytest.raises(CorruptEntryError, match="decompresses to more than the 1024 bytes"):
        decompress(lying, limit=2**30)


def test_a_damaged_compressed_file_on_disk_is_dropped_and_recomputed(tmp_path):
    key, entry = an_entry()
    disk = DiskTier(tmp_path, 2**30, compression="zstd")
    disk.put(key, entry)
    blob = disk.raw(key)
    disk._cache.set(key, blob[:-9])
    assert disk.get(key) is None and disk.corrupt == 1 and key not in disk


def test_the_setting_is_checked_and_reaches_the_redis_tier(tmp_path, redis_url):
    with pytest.raises(RequestError, match="compression must be None, 'zstd' or 'lz4'"):
        StoreConfig(compression="gzip")
    with pytest.raises(RequestError, match="compression_level"):
        StoreConfig(compression="zstd", compression_level=30)
    key, entry = an_entry()
    store = TieredStore(tmp_path, StoreConfig(compression="lz4", redis_url=redis_url, redis_namespace="tcomp"))
    store.put(key, entry)
    remote = store.remote._client.get(store.remote._one(key))
    assert remote.startswith(MAGIC_Z) and store.disk.raw(key).startswith(MAGIC_Z)
    other = TieredStore(tmp_path / "other", StoreConfig(redis_url=redis_url, redis_namespace="tcomp"))
    assert_same(other.get(key), entry) and other.last_hit_tier == "redis"
    assert other.disk.raw(key) == remote  # promoted as read: not serialised again (nor decompressed)
    store.remote.discard(key)
