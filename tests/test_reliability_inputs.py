"""Bad settings, oversized and malformed inputs, a full disk and edited weights, as a user meets
them: one clear error naming the input or file, nothing written that a later run trips over."""

import json
import resource
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import demo_docs
from hypic_rag import ExecutorConfig
from hypic_rag.errors import RequestError, StoreError
from hypic_rag.models.fingerprint import ModelFingerprint
from hypic_rag.models.tiny import tiny_model
from hypic_rag.precompute.corpus import Document, as_documents, load_corpus
from hypic_rag.precompute.segmenter import Segmenter
from hypic_rag.store.manifest import Manifest

CLI = [sys.executable, "-m", "hypic_rag.cli.main"]


def cli(*args, timeout=300, **kwargs):
    return subprocess.run(CLI + list(args), capture_output=True, timeout=timeout, **kwargs)


def one_clear_line(out):
    err = out.stderr.decode() if isinstance(out.stderr, bytes) else out.stderr
    lines = [l for l in err.splitlines() if l.startswith("hypic-rag: error:")]
    assert out.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- fingerprint (item 7)
def test_a_change_in_the_middle_of_every_tensor_changes_the_fingerprint():
    model = tiny_model("qwen3_5")
    before = ModelFingerprint.of(model, 8, ()).weights_digest
    with torch.no_grad():
        for p in model.parameters():
            p.view(-1)[p.numel() // 2] += 1e-3  # the old digest sampled only each tensor's ends
    assert ModelFingerprint.of(model, 8, ()).weights_digest != before
    with torch.no_grad():
        first = next(model.parameters())
        first.view(-1)[first.numel() // 3] += 1e-3  # one element of one tensor is enough
    assert ModelFingerprint.of(model, 8, ()).weights_digest != before


# ----------------------------------------------------------------------------- settings (items 5, 6)
def test_invalid_settings_are_refused_before_the_store_is_touched(tmp_path):
    from hypic_rag.api import SHIPPED_MODEL, HypicRAG

    with pytest.raises(RequestError, match="max_segment_tokens must be an integer >= 16"):
        HypicRAG.create(tmp_path / "s", model=SHIPPED_MODEL, max_segment_tokens=5)
    assert not (tmp_path / "s" / "manifest.json").exists()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs(2)))
    assert "max_segment_tokens" in one_clear_line(cli("precompute", str(corpus), "--store", str(tmp_path / "s2"),
                                                      "--max-segment-tokens", "5"))
    assert not (tmp_path / "s2" / "manifest.json").exists()
    ok = cli("precompute", str(corpus), "--store", str(tmp_path / "s2"))  # a later valid run just works
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("bad", [{"temperature": float("nan")}, {"top_p": float("nan")}, {"temperature": True},
                                 {"seam_tokens": True}, {"seed": 1.5}])
def test_non_finite_or_boolean_numbers_are_refused(bad):
    with pytest.raises(ValueError, match=list(bad)[0]):
        ExecutorConfig(**bad)


@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "JSON list, not an object"),
    (None, "unknown keys \\['surprise'\\]"),
    ('{"format": "hypic_rag/1"}', "older hypic_rag"),
])
def test_a_malformed_manifest_is_one_clear_error(tmp_path, content, why):
    if content is None:
        from hypic_rag.store.manifest import FORMAT

        data = dict(fingerprint="x", model_path=None, seam_tokens=8, template={}, embedder="e", embedding_dim=3,
                    max_segment_tokens=64, store={}, format=FORMAT, surprise=1)
        content = json.dumps(data)
    (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(StoreError, match=why):
        Manifest.read(tmp_path)
    assert why.split("\\")[0] in one_clear_line(cli("inspect", "--store", str(tmp_path)))


def test_cli_errors_name_the_input(tmp_path):
    a_file = tmp_path / "plain.txt"
    a_file.write_text("hello")
    assert "is a file, not a store directory" in one_clear_line(cli("inspect", "--store", str(a_file)))
    bad_meta = tmp_path / "m.jsonl"
    bad_meta.write_text(json.dumps({"id": "a", "text": "x y z", "metadata": ["not", "an", "object"]}) + "\n")
    assert f"{bad_meta}:1" in one_clear_line(cli("precompute", str(bad_meta), "--store", str(tmp_path / "s")))
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 50)
    assert "image.txt: a binary file" in one_clear_line(cli("precompute", str(binary), "--store", str(tmp_path / "s")))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    assert "latin.txt: not UTF-8 text (byte 3" in one_clear_line(cli("precompute", str(latin), "--store", str(tmp_path / "s")))
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "good.txt").write_text("A real document about Kamo.")
    binary.rename(folder / "image.txt")
    report = load_corpus([folder])
    assert [d.doc_id for d in report.documents] == [str((folder / "good.txt").resolve())]
    assert "binary" in report.skipped[0]
    store = tmp_path / "store"
    assert cli("precompute", str(folder / "good.txt"), "--store", str(store)).returncode == 0
    undecodable = cli("query", b"What about caf\xff?", "--store", str(store))
    assert "not valid UTF-8" in one_clear_line(undecodable)


def test_api_request_errors(tmp_path):
    from conftest import demo_rag

    rag = demo_rag(4)
    with pytest.raises(RequestError, match="k must be an integer"):
        rag.query("What is it?", k=True)
    with pytest.raises(RequestError, match='"metadata" must be an object'):
        as_documents([{"text": "x", "metadata": [1, 2]}])
    with pytest.raises(RequestError, match="batch_size"):
        rag.ingest(["some text"], batch_size=0)


# ----------------------------------------------------------------------------- bounds (item 3)
def test_ids_and_titles_are_bounded(tokenizer):
    with pytest.raises(RequestError, match="doc_id must be a string of at most 1024 characters"):
        Document("x" * 5000, "t", "text")
    with pytest.raises(RequestError, match="title must be a string of at most 1024 characters"):
        Document("d", "x" * 200_000, "text")
    from hypic_rag.config import PromptTemplate

    segmenter = Segmenter(tokenizer, PromptTemplate(), 64)
    with pytest.raises(RequestError, match="shorten the title"):
        segmenter.split(Document("d", "word " * 150, "text"))


def test_every_segment_fits_its_budget(tokenizer):
    from hypic_rag.config import PromptTemplate

    text = ("Kamo lives in Vostok. " * 40 + "x" * 3000 + " " + "supercalifragilistic" * 60 + "\n\n" + "short. " * 5)
    for budget in (16, 40, 512):
        for seg in Segmenter(tokenizer, PromptTemplate(), budget).split(Document("d", "T", text)):
            assert len(seg.token_ids) <= budget
            assert tuple(tokenizer.encode(seg.text, add_special_tokens=False)) == seg.token_ids


def test_a_one_megabyte_paragraph_splits_in_bounded_memory_with_progress(tmp_path):
    script = textwrap.dedent("""
        import random, resource, sys
        from transformers import AutoTokenizer
        from hypic_rag.api import SHIPPED_MODEL
        from hypic_rag.config import PromptTemplate
        from hypic_rag.precompute.corpus import Document
        from hypic_rag.precompute.segmenter import Segmenter
        tok = AutoTokenizer.from_pretrained(SHIPPED_MODEL)
        r = random.Random(0)
        text = " ".join(r.choice(["alpha", "river", "stone", "Kamo", "north"]) for _ in range(200_000))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        calls = []
        segs = Segmenter(tok, PromptTemplate(), 512).split(Document("big", "big", text), lambda d, t: calls.append((d, t)))
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(len(segs), len(calls), calls[-1][0] == calls[-1][1] == len(text), round(grown))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    segments, calls, finished, grown_mb = out.stdout.split()
    assert int(segments) > 1000 and int(calls) > 100 and finished == "True" and int(grown_mb) < 200


# ----------------------------------------------------------------------------- disk full (item 6)
def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (400 * 1024, 400 * 1024))  # the SQLite files fit, an entry does not


def test_a_full_disk_is_one_clear_error_and_leaves_no_orphan(tmp_path):
    corpus = tmp_path / "c.jsonl"
    docs = [dict(d, text=" ".join([d["text"]] * 6)) for d in demo_docs(3)]  # ~500-token segments, ~600 KB entries
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    store = tmp_path / "store"
    full = cli("precompute", str(corpus), "--store", str(store), preexec_fn=_limit_file_size)
    line = one_clear_line(full)
    assert str(store) in line and "free space there" in line
    entries = store / "entries"
    assert set(value_files(entries)) <= named_files(entries)  # the partial file was removed at once
    again = cli("precompute", str(corpus), "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert set(value_files(entries)) == named_files(entries) and len(named_files(entries)) == 3


def value_files(entries):
    return [p.relative_to(entries).as_posix() for p in entries.glob("*/*/*.val")]


def named_files(entries):
    import sqlite3

    with sqlite3.connect(entries / "cache.db") as db:
        return {f for (f,) in db.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}


def test_orphan_value_files_are_swept_on_open_but_young_ones_are_left(tmp_path):
    import os
    import time

    from hypic_rag.store.disk import DiskTier

    DiskTier(tmp_path, 2**30).close()
    old, young = tmp_path / "aa/bb" / ("1" * 28 + ".val"), tmp_path / "cc/dd" / ("2" * 28 + ".val")
    for path in (old, young):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial write")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    disk = DiskTier(tmp_path, 2**30)
    assert disk.orphans_removed == 1 and not old.exists() and young.exists()
