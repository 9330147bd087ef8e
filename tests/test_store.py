"""Serde, tiers, promotion/demotion, corruption handling, pickle refusal."""

import dataclasses

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.store.disk import DiskTier
from hypic_rag.store.memory import MemoryTier
from hypic_rag.store.serde import CorruptEntryError, entry_from_bytes, entry_to_bytes
from hypic_rag.store.tiered import StoreConfig, TieredStore


def entries(family="qwen3_5", n=3, length=20):
    ex = HypicExecutor(get_model(family))
    return ex, [(ex.key_of(s), ex.precompute(s)) for s in random_ids([length] * n, seed=n)]


def assert_same(a, b):
    assert a.token_ids == b.token_ids and a.seam_tokens == b.seam_tokens and a.fingerprint == b.fingerprint
    for x, y in zip(a.linear + a.attention, b.linear + b.attention):
        for f in dataclasses.fields(x):
            u, v = getattr(x, f.name), getattr(y, f.name)
            if isinstance(u, torch.Tensor):
                assert torch.equal(u.cpu(), v.cpu()) and u.dtype == v.dtype
            else:
                assert u == v


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1", "kimi_linear", "lfm2"])
def test_serde_round_trip(family):
    _, [(_, entry)] = entries(family, n=1)
    assert_same(entry_from_bytes(entry_to_bytes(entry)), entry)


def test_truncated_or_altered_bytes_are_detected():
    _, [(_, entry)] = entries(n=1)
    blob = entry_to_bytes(entry)
    with pytest.raises(CorruptEntryError, match="checksum"):
        entry_from_bytes(blob[:-10])
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0xFF
    with pytest.raises(CorruptEntryError, match="checksum"):
        entry_from_bytes(bytes(flipped))
    with pytest.raises(CorruptEntryError):
        entry_from_bytes(b"not an entry at all, long enough to pass length")


def test_memory_tier_lru_by_bytes():
    _, items = entries(n=3)
    size = items[0][1].nbytes
    tier = MemoryTier(capacity_bytes=2 * size + 1)
    assert tier.insert(*items[0]) == [] and tier.insert(*items[1]) == []
    tier.get(items[0][0])  # 0 is now most recent
    evicted = tier.insert(*items[2])
    assert [k for k, _ in evicted] == [items[1][0]]
    assert items[0][0] in tier and items[2][0] in tier and tier.used_bytes == 2 * size
    too_big = MemoryTier(capacity_bytes=size - 1)
    assert too_big.insert(*items[0])[0][0] == items[0][0] and len(too_big) == 0


def test_disk_tier_round_trip_and_corruption_dropped(tmp_path):
    _, [(key, entry)] = entries(n=1)
    disk = DiskTier(tmp_path, size_limit_bytes=2**30)
    disk.put(key, entry)
    assert_same(disk.get(key), entry)
    disk._cache.set(key, disk.raw(key)[:-7])  # truncate in place
    assert disk.get(key) is None and disk.corrupt == 1 and key not in disk


def test_disk_tier_never_unpickles(tmp_path):
    disk = DiskTier(tmp_path, size_limit_bytes=2**30)
    with pytest.raises(TypeError, match="bytes only"):
        disk._cache.set("x", {"not": "bytes"})

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    plain = __import__("diskcache").Cache(str(tmp_path))  # an attacker writing with the default Disk
    plain.set("evil", Boom())
    plain.close()
    disk = DiskTier(tmp_path, size_limit_bytes=2**30)
    assert disk.get("evil") is None and disk.corrupt == 1


def test_tiered_promotion_demotion_and_counters(tmp_path):
    ex, items = entries(n=3)
    size = items[0][1].nbytes
    store = TieredStore(tmp_path, StoreConfig(device_bytes=size + 1, host_bytes=size + 1, disk_bytes=2**30))
    for key, entry in items:
        store.put(key, entry)
    top, host = store.memory_tiers
    assert top.keys() == [items[2][0]] and host.keys() == [items[1][0]]  # 0 fell to disk only
    assert_same(store.get(items[0][0]), items[0][1])
    assert store.last_hit_tier == "disk"
    assert top.keys() == [items[0][0]] and host.keys() == [items[2][0]]  # promoted; 2 demoted
    assert store.get(items[2][0]) is not None and store.last_hit_tier == "host"
    stats = {s.name: s for s in store.stats()}
    assert stats["disk"].hits == 1 and stats["host"].hits == 1 and stats["disk"].entries == 3
    assert store.get("missing") is None and store.last_hit_tier is None
    store.close()
    reopened = TieredStore(tmp_path, StoreConfig(device_bytes=size + 1, host_bytes=size + 1, disk_bytes=2**30))
    assert_same(reopened.get(items[1][0]), items[1][1])


def test_executor_recomputes_a_corrupt_entry(tmp_path):
    model = get_model("qwen3_5")
    store = TieredStore(tmp_path, StoreConfig(device_bytes=0, host_bytes=0, disk_bytes=2**30))
    ex = HypicExecutor(model, store=store)
    segs, q = random_ids([25, 25], seed=3), [5, 6]
    first = ex.generate(segs, q, max_new_tokens=2)
    key = ex.key_of(segs[0])
    store.disk._cache.set(key, store.disk.raw(key)[:100])
    again = ex.generate(segs, q, max_new_tokens=2)
    assert again.segment_misses == 1 and again.segment_hits == 1 and again.token_ids == first.token_ids


def test_store_config_validation():
    with pytest.raises(ValueError, match="disk_bytes must be > 0"):
        StoreConfig(disk_bytes=0)
    with pytest.raises(ValueError, match="host_bytes"):
        StoreConfig(host_bytes=-5)


def test_serialisation_is_deterministic():
    _, [(_, entry)] = entries(n=1)
    blob = entry_to_bytes(entry)
    assert entry_to_bytes(entry) == blob == entry_to_bytes(entry_from_bytes(blob))
