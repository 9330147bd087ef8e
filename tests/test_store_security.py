"""A store directory is untrusted input: crafted rows and files must never reach outside the store,
run code, or read without bound. Each case plants real rows in the real diskcache SQLite file."""

import os
import pickle
import resource
import sqlite3

import pytest

from diskcache.core import MODE_BINARY

from conftest import get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.errors import StoreError
from hypic_rag.store.disk import DiskTier
from hypic_rag.store.tiered import StoreConfig, TieredStore

NO_MEMORY = StoreConfig(device_bytes=0, host_bytes=0, disk_bytes=2**30)


def stored_request(store_dir):
    """An executor over a disk-only store holding the entries of one two-segment request."""
    store = TieredStore(store_dir, NO_MEMORY)
    ex = HypicExecutor(get_model("qwen3_5"), store=store)
    segs, q = random_ids([25, 25], seed=11), [5, 6]
    first = ex.generate(segs, q, max_new_tokens=3)
    return ex, store, segs, q, first


def set_row(store, row_key, **columns):
    store.disk.close()
    con = sqlite3.connect(store.disk.directory / "cache.db")
    with con:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        con.execute(f"UPDATE Cache SET {assignments} WHERE key = ?", (*columns.values(), row_key))
    con.close()


def victim(tmp_path):
    path = tmp_path / "victim" / "secret.txt"
    path.parent.mkdir()
    path.write_text("precious")
    return path


@pytest.mark.parametrize("absolute", [False, True])
def test_a_row_naming_a_file_outside_the_store_never_reads_or_deletes_it(tmp_path, absolute):
    secret = victim(tmp_path)
    ex, store, segs, q, first = stored_request(tmp_path / "store")
    key = ex.key_of(segs[0])
    name = str(secret) if absolute else "../../victim/secret.txt"  # entries/ sits in store/
    set_row(store, key, mode=MODE_BINARY, filename=name, value=None)
    ex.store = TieredStore(tmp_path / "store", NO_MEMORY)
    again = ex.generate(segs, q, max_new_tokens=3)
    assert secret.read_text() == "precious" and secret.parent.is_dir()
    assert again.token_ids == first.token_ids and again.segment_misses == 1
    assert ex.store.disk.corrupt == 1


def test_a_symbolic_link_inside_the_layout_is_not_followed(tmp_path):
    secret = victim(tmp_path)
    ex, store, segs, q, first = stored_request(tmp_path / "store")
    key = ex.key_of(segs[1])
    entries = store.disk.directory
    link_dir = entries / "ab"
    link_dir.symlink_to(secret.parent, target_is_directory=True)
    (secret.parent / "cd").mkdir()
    (secret.parent / "cd" / ("0" * 28 + ".val")).write_text("also precious")
    set_row(store, key, mode=MODE_BINARY, filename="ab/cd/" + "0" * 28 + ".val", value=None)
    ex.store = TieredStore(tmp_path / "store", NO_MEMORY)
    again = ex.generate(segs, q, max_new_tokens=3)
    assert again.token_ids == first.token_ids and again.segment_misses == 1
    assert (secret.parent / "cd" / ("0" * 28 + ".val")).read_text() == "also precious" and secret.exists()


class Payload:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creating the marker file proves the pickle ran


def test_a_pickled_key_is_never_unpickled(tmp_path):
    ex, store, segs, _, _ = stored_request(tmp_path / "store")
    marker = tmp_path / "pwned"
    Payload.marker = marker
    set_row(store, ex.key_of(segs[0]), key=pickle.dumps(Payload()), raw=0)
    disk = DiskTier(tmp_path / "store" / "entries", 2**30)
    assert disk.keys() == [ex.key_of(segs[1])]
    with pytest.raises(ValueError):
        list(disk._cache.iterkeys())  # diskcache's own listing refuses the row too
    assert not marker.exists()


@pytest.mark.parametrize("plant", [
    "INSERT INTO Settings VALUES ('sqlite_temp_store_directory', '''/tmp''')",
    "INSERT INTO Settings VALUES ('disk_evil', 1)",
    "UPDATE Settings SET value = 'wal; x' WHERE key = 'sqlite_journal_mode'",
    "CREATE TRIGGER planted AFTER UPDATE ON Cache BEGIN DELETE FROM Cache; END",
])
def test_planted_settings_or_schema_refuse_to_open(tmp_path, plant):
    DiskTier(tmp_path, 2**30).close()
    con = sqlite3.connect(tmp_path / "cache.db")
    with con:
        con.execute(plant)
    con.close()
    with pytest.raises(StoreError, match="refusing to open it"):
        DiskTier(tmp_path, 2**30)


def test_a_huge_sparse_value_file_is_not_read_whole(tmp_path):
    ex, store, segs, q, first = stored_request(tmp_path / "store")
    key = ex.key_of(segs[0])
    blob = store.disk.raw(key)
    name = "ee/ff/" + "1" * 28 + ".val"
    path = store.disk.directory / name
    path.parent.mkdir(parents=True)
    path.write_bytes(blob)
    os.truncate(path, 12 * 2**30)  # sparse: the header still declares the real size
    set_row(store, key, mode=MODE_BINARY, filename=name, value=None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ex.store = TieredStore(tmp_path / "store", NO_MEMORY)
    again = ex.generate(segs, q, max_new_tokens=3)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert again.token_ids == first.token_ids and again.segment_misses == 1 and grown_mb < 512
    assert "declares" in ex.store.disk.last_error
