"""The Redis tier against a real redis-server: sharing between stores and processes, chunking, a
server going away and coming back, and values that must never be served."""

import json
import subprocess
import sys
import uuid

import pytest
import torch

from conftest import demo_docs, get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.store.redis_tier import RedisTier
from hypic_rag.store.serde import entry_to_bytes
from hypic_rag.store.tiered import StoreConfig, TieredStore

pytest.importorskip("redis")


def entry_and_key(seed=0, length=40):
    ex = HypicExecutor(get_model("qwen3_5"))
    (ids,) = random_ids([length], seed=seed)
    return ex.precompute(ids), ex.key_of(tuple(ids))


def same(a, b):
    return all(torch.equal(x.interior_state, y.interior_state) and torch.equal(x.conv_tail, y.conv_tail)
               for x, y in zip(a.linear, b.linear)) and all(
        torch.equal(x.keys, y.keys) for x, y in zip(a.attention, b.attention))


def namespace():
    return f"t{uuid.uuid4().hex[:12]}"


def test_round_trip_in_one_value_and_in_chunks(redis_url):
    entry, key = entry_and_key()
    size = len(entry_to_bytes(entry))
    for chunk in (2**20, 4096):
        tier = RedisTier(redis_url, namespace(), chunk_bytes=chunk)
        tier.put(key, entry)
        assert key in tier and tier.keys() == [key]
        assert same(tier.get(key), entry) and tier.hits == 1
        chunks = list(tier._client.scan_iter(match=f"{tier.prefix}c:*"))
        assert len(chunks) == (0 if chunk > size else -(-size // chunk))
        tier.discard(key)
        assert key not in tier and tier.get(key) is None and not list(tier._client.scan_iter(match=f"{tier.prefix}*"))


def test_values_failing_any_check_are_deleted_never_served(redis_url):
    entry, key = entry_and_key(seed=1)
    other, other_key = entry_and_key(seed=2)
    tier = RedisTier(redis_url, namespace(), chunk_bytes=4096)
    client = tier._client
    client.set(tier._one(key), b"\x00garbage")  # not an entry at all
    assert tier.get(key) is None and tier.corrupt == 1 and not client.exists(tier._one(key))
    client.set(tier._one(key), entry_to_bytes(other))  # a valid entry under another entry's key
    assert tier.get(key) is None and tier.corrupt == 2
    tier.put(key, entry)  # chunked; then one chunk altered
    client.set(tier._chunk(key, 1), b"x" * len(client.get(tier._chunk(key, 1))))
    assert tier.get(key) is None and tier.corrupt == 3 and not client.exists(tier._manifest(key))
    client.set(tier._manifest(key), f"1:{2**40}:{'0' * 64}".encode())  # declares a terabyte
    assert tier.get(key) is None and tier.corrupt == 4
    tier.put(other_key, other)
    assert same(tier.get(other_key), other)


def test_a_server_that_goes_away_and_comes_back_is_a_miss_meanwhile(own_redis, tmp_path):
    entry, key = entry_and_key(seed=3)
    later, later_key = entry_and_key(seed=4)
    store = TieredStore(tmp_path, StoreConfig(redis_url=own_redis.url, redis_namespace=namespace()))
    store.put(key, entry)
    own_redis.stop()
    store.put(later_key, later)  # no exception: the local tiers keep it
    assert store.remote.errors >= 1 and store.remote.get(key) is None and later_key not in store.remote
    assert same(store.get(later_key), later)
    own_redis.start()  # an empty server: nothing persisted
    store.put(later_key, later)
    assert later_key in store.remote and same(store.remote.get(later_key), later)


def test_a_second_store_reads_through_to_redis_and_promotes_to_its_disk(redis_url, tmp_path):
    entry, key = entry_and_key(seed=5)
    config = StoreConfig(redis_url=redis_url, redis_namespace=namespace())
    a, b = TieredStore(tmp_path / "a", config), TieredStore(tmp_path / "b", config)
    a.put(key, entry)
    assert key in b and key not in b.disk
    assert same(b.get(key), entry) and b.last_hit_tier == "redis" and b.last_read_untrusted
    assert key in b.disk and [s.name for s in b.stats()][-1] == "redis"
    b.retire(key)  # a store's own retirement leaves the shared tier alone
    assert key not in b.disk and key in b.remote


def test_two_processes_share_a_store_through_redis(redis_url, tmp_path):
    """One process precomputes (the CLI, a subprocess); another, with its own local store, ingests the
    same documents without computing an entry and answers from the Redis tier."""
    from hypic_rag.api import HypicRAG

    ns, docs = namespace(), demo_docs(6)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = subprocess.run([sys.executable, "-m", "hypic_rag.cli.main", "precompute", str(corpus), "--store",
                          str(tmp_path / "writer"), "--redis", redis_url, "--redis-namespace", ns],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with HypicRAG.create(tmp_path / "reader", store_config=StoreConfig(redis_url=redis_url, redis_namespace=ns)) as rag:
        report = rag.ingest(docs)
        assert report.entries_computed == 0 and report.entries_reused == 6
        result = rag.query(f"What is the home city of {docs[2]['title']}?", k=2)
        assert result.generation.segment_hits == 2 and result.tier_hits.get("redis") == 2
    with HypicRAG.create(tmp_path / "alone") as alone:
        alone.ingest(docs)
        assert alone.query(f"What is the home city of {docs[2]['title']}?", k=2).answer == result.answer


def test_an_ingest_survives_a_redis_restart_midway(own_redis, tmp_path):
    from hypic_rag.api import HypicRAG

    docs = demo_docs(9)
    config = StoreConfig(redis_url=own_redis.url, redis_namespace=namespace())
    with HypicRAG.create(tmp_path / "s", store_config=config) as rag:
        rag.ingest(docs[:3])
        own_redis.stop()
        report = rag.ingest(docs[3:6])  # Redis down: computed and kept locally
        assert report.entries_computed == 3 and rag.store.remote.errors > 0
        own_redis.start()
        assert rag.ingest(docs[6:]).entries_computed == 3
        assert len(rag.store.remote) == 3 and len(rag.store) == 9  # the restarted server kept nothing older
        name = docs[4]["title"]
        assert rag.query(f"What is the home city of {name}?", k=2).generation.segment_hits == 2


def test_store_config_checks_the_url_and_reads_env_urls(monkeypatch, redis_url, tmp_path):
    from hypic_rag.errors import RequestError, StoreError

    with pytest.raises(RequestError, match="redis_url"):
        StoreConfig(redis_url="http://example.com")
    with pytest.raises(StoreError, match=r"\$HYPIC_NO_SUCH_VAR"):
        TieredStore(tmp_path / "x", StoreConfig(redis_url="env:HYPIC_NO_SUCH_VAR"))
    monkeypatch.setenv("HYPIC_TEST_URL", redis_url)
    entry, key = entry_and_key(seed=6)
    store = TieredStore(tmp_path / "y", StoreConfig(redis_url="env:HYPIC_TEST_URL", redis_namespace=namespace()))
    store.put(key, entry)
    assert key in store.remote


def test_a_redis_cluster_holds_chunked_entries_in_one_slot_each():
    from redis_server import RedisClusterNodes

    cluster = RedisClusterNodes()
    try:
        tier = RedisTier(cluster.url, namespace(), chunk_bytes=4096)
        entries = [entry_and_key(seed=s) for s in (7, 8, 9)]
        for entry, key in entries:
            tier.put(key, entry)  # chunks and manifest in one MULTI/EXEC: one hash slot per entry
        assert tier.errors == 0 and sorted(tier.keys()) == sorted(k for _, k in entries)
        assert all(same(tier.get(k), e) for e, k in entries)
        tier.discard(entries[0][1])
        assert entries[0][1] not in tier and len(tier) == 2
    finally:
        cluster.close()


def test_a_ray_precompute_into_redis_interrupted_midway_resumes_on_another_machine(redis_url, tmp_path):
    """`hypic-rag precompute --ray` writing into Redis is stopped (Ctrl-C) once part of the corpus is
    there; a run from another store directory (another machine) computes only the rest."""
    import os
    import re
    import signal
    import time

    pytest.importorskip("ray")
    ns, docs = namespace(), demo_docs(24)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))

    def precompute(store):
        return [sys.executable, "-m", "hypic_rag.cli.main", "precompute", str(corpus), "--store", str(tmp_path / store),
                "--redis", redis_url, "--redis-namespace", ns, "--ray", "--workers", "1", "--batch-size", "2"]

    tier = RedisTier(redis_url, ns)
    first = subprocess.Popen(precompute("first"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    deadline = time.time() + 240
    while len(tier) < 6 and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # as Ctrl-C
    first.communicate(timeout=120)
    done = len(tier)
    assert 6 <= done < 24, f"{done} entries in Redis when stopped"
    second = subprocess.run(precompute("second"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    computed, reused = map(int, re.search(r"(\d+) entries computed, (\d+) reused", second.stderr).groups())
    assert (computed, reused) == (24 - done, done) and len(tier) == 24
