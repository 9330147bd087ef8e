"""Stored entries that are damaged, mislabelled or foreign are dropped and recomputed once, never
served; the entry reader survives any byte it is handed (fuzz)."""

import dataclasses
import hashlib
import json
import random

import pytest

from conftest import get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.store.serde import CorruptEntryError, MAGIC, entry_from_bytes, entry_to_bytes
from hypic_rag.store.tiered import StoreConfig, TieredStore
from test_store import assert_same

NO_MEMORY = StoreConfig(device_bytes=0, host_bytes=0, disk_bytes=2**30)


def disk_executor(path, family="qwen3_5"):
    return HypicExecutor(get_model(family), store=TieredStore(path, NO_MEMORY))


def plant(ex, key, entry):
    ex.store.disk._cache.set(key, entry_to_bytes(entry))  # a well-formed blob with a valid checksum


def test_an_entry_relabelled_with_another_segments_tokens_is_not_served(tmp_path):
    ex = disk_executor(tmp_path)
    a, b = random_ids([30, 30], seed=21)
    q = [5, 6, 7]
    clean = ex.generate([b], q, max_new_tokens=4)
    forged = dataclasses.replace(ex.precompute(a), token_ids=tuple(b))  # A's states under B's tokens
    plant(ex, ex.key_of(b), forged)
    again = ex.generate([b, b], q, max_new_tokens=4)  # twice: the second read comes from the promoted copy
    assert again.token_ids == ex.generate([b, b], q, max_new_tokens=4).token_ids
    assert ex.dropped_entries == 1 and again.segment_misses == 2
    plant(ex, ex.key_of(b), forged)
    again = ex.generate([b], q, max_new_tokens=4)
    assert again.token_ids == clean.token_ids and ex.dropped_entries == 2 and again.segment_misses == 1
    assert ex.generate([b], q, max_new_tokens=4).segment_hits == 1  # recomputed once, then served


@pytest.mark.parametrize("damage", ["nan", "inf", "short_conv_tail", "missing_layer", "half_keys", "seam"])
def test_a_damaged_entry_is_dropped_and_recomputed_once(tmp_path, damage):
    ex = disk_executor(tmp_path)
    (seg,) = random_ids([30], seed=22)
    q = [9, 10]
    clean = ex.generate([seg], q, max_new_tokens=4)
    entry = ex.precompute(seg)
    lin, att = list(entry.linear), list(entry.attention)
    if damage in ("nan", "inf"):
        state = lin[0].interior_state.clone()
        state.view(-1)[3] = float(damage)
        lin[0] = dataclasses.replace(lin[0], interior_state=state)
    elif damage == "short_conv_tail":
        lin[0] = dataclasses.replace(lin[0], conv_tail=lin[0].conv_tail[:, :-1].contiguous())
    elif damage == "missing_layer":
        lin = lin[1:]
    elif damage == "half_keys":
        att[0] = dataclasses.replace(att[0], keys=att[0].keys.half(), values=att[0].values.half())
    bad = dataclasses.replace(entry, linear=tuple(lin), attention=tuple(att),
                              seam_tokens=3 if damage == "seam" else entry.seam_tokens)
    plant(ex, ex.key_of(seg), bad)
    again = ex.generate([seg], q, max_new_tokens=4)
    assert again.token_ids == clean.token_ids and again.segment_misses == 1
    third = ex.generate([seg], q, max_new_tokens=4)
    assert third.segment_hits == 1 and third.token_ids == clean.token_ids


def _rechecksummed(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).digest() + payload


def test_fuzzed_entries_never_raise_anything_else_and_never_serve_other_bytes(tmp_path):
    ex = HypicExecutor(get_model("falcon_h1"))
    (seg,) = random_ids([20], seed=23)
    entry = ex.precompute(seg)
    key = ex.key_of(seg)
    blob = entry_to_bytes(entry)
    header_len = int.from_bytes(blob[40:48], "little")
    rng = random.Random(0)
    outcomes = {"refused": 0, "same": 0}
    for trial in range(400):
        data = bytearray(blob)
        kind = trial % 4
        if kind == 0:  # random flips anywhere, checksum left as it is
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate or extend
            data = data[: rng.randrange(len(data))] if rng.random() < 0.5 else data + bytes(rng.randrange(1, 99))
        else:  # edit the safetensors header (or its length field) and re-checksum, as a forger would
            start = 40 if kind == 2 else 48
            stop = 48 if kind == 2 else 48 + header_len
            for _ in range(rng.randint(1, 3)):
                data[rng.randrange(start, stop)] = rng.randrange(32, 127)
            data = bytearray(_rechecksummed(bytes(data[40:])))
        try:
            got = entry_from_bytes(bytes(data), key=key)
        except CorruptEntryError:
            outcomes["refused"] += 1
            continue
        assert_same(got, entry)  # an edit that changed nothing of substance (e.g. header whitespace)
        outcomes["same"] += 1
    assert outcomes["refused"] > 300


def test_header_edits_that_relabel_tokens_are_caught_by_the_key(tmp_path):
    ex = HypicExecutor(get_model("qwen3_5"))
    (seg,) = random_ids([12], seed=24)
    blob = entry_to_bytes(ex.precompute(seg))
    header_len = int.from_bytes(blob[40:48], "little")
    header = json.loads(blob[48 : 48 + header_len])
    meta = json.loads(header["__metadata__"]["hypic_rag"])
    meta["token_ids"][0] = (meta["token_ids"][0] + 1) % 128
    header["__metadata__"]["hypic_rag"] = json.dumps(meta, sort_keys=True)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    payload = len(text).to_bytes(8, "little") + text + blob[48 + header_len :]
    relabelled = _rechecksummed(payload)
    assert entry_from_bytes(relabelled).token_ids[0] == meta["token_ids"][0]  # parses: only the key can tell
    with pytest.raises(CorruptEntryError, match="do not match the key"):
        entry_from_bytes(relabelled, key=ex.key_of(seg))


def test_entries_of_every_family_pass_their_own_checks(hybrid):
    _, model = hybrid
    ex = HypicExecutor(model)
    for seg in random_ids([3, 9, 40], seed=25):
        entry = ex.precompute(seg)
        assert ex.checker.problem(entry, tuple(seg)) is None
        assert ex.checker.spot_check([entry]) == [True]
    other = ex.precompute(random_ids([40], seed=26)[0])
    assert ex.checker.spot_check([dataclasses.replace(other, token_ids=tuple(seg))]) == [False]
