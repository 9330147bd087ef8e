"""Documents have a lifecycle: ids from content or full path, edits re-precomputed with the old
segments retired, deletes, and nothing silently dropped or merged."""

import subprocess
import sys

import pytest

from hypic_rag.api import SHIPPED_MODEL, HypicRAG
from hypic_rag.errors import RequestError

ALICE = "Alice Marrow was born in Lisbon. She works as a baker."
BOB = "Bob Kestrel was born in Oslo. He works as a pilot."


def _store(tmp_path, name="store"):
    return HypicRAG.create(tmp_path / name, model=SHIPPED_MODEL)


def _texts(rag):
    return sorted(r.text for r in rag.index.records())


def test_two_ingests_of_texts_without_ids_keep_both_and_the_same_text_twice_changes_nothing(tmp_path):
    with _store(tmp_path) as rag:
        first, second = rag.ingest([ALICE]), rag.ingest([BOB])
        assert first.documents_new == second.documents_new == 1
        assert len({r.doc_id for r in rag.index.records()}) == 2
        assert any("Oslo" in t for t in _texts(rag)) and any("Lisbon" in t for t in _texts(rag))
        again = rag.ingest([ALICE, {"text": BOB}])
        assert (again.documents_unchanged, again.new_segments, again.entries_computed) == (2, 0, 0)
        with pytest.raises(RequestError, match="two different documents have the id"):
            rag.ingest([{"id": "x", "text": ALICE}, {"id": "x", "text": BOB}])


def test_an_edited_file_is_precomputed_again_and_its_old_segments_and_entries_retired(tmp_path):
    doc = tmp_path / "people.md"
    doc.write_text(ALICE)
    with _store(tmp_path) as rag:
        rag.ingest([doc])
        old = rag.index.records()
        doc.write_text(ALICE.replace("Lisbon", "Porto"))
        report = rag.ingest([doc])
        assert (report.documents_updated, report.new_segments, report.entries_computed) == (1, len(old), len(old))
        assert report.segments_retired == len(old) and report.entries_retired == len(old)
        texts = _texts(rag)
        assert any("Porto" in t for t in texts) and not any("Lisbon" in t for t in texts)
        assert all(r.key not in rag.store for r in old)  # the old text's entries are gone, not served
        result = rag.query("Where was Alice Marrow born?", k=1, max_new_tokens=4)
        assert "Porto" in result.segments[0].record.text


def test_files_of_one_name_in_two_folders_stay_two_documents_and_front_matter_is_metadata(tmp_path):
    for folder, city in (("a", "Lisbon"), ("b", "Oslo")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "notes.md").write_text(
            f"---\ntitle: Notes from {folder}\ntags: [people, {city.lower()}]\ndate: 2026-01-02\n---\n"
            f"# Heading\n\nSomeone was born in {city}.")
    with _store(tmp_path) as rag:
        report = rag.ingest([tmp_path / "a", tmp_path / "b"])
        records = rag.index.records()
        assert report.documents == report.documents_new == 2 and len({r.doc_id for r in records}) == 2
        a = next(r for r in records if "Lisbon" in r.text)
        assert a.doc_id == str((tmp_path / "a" / "notes.md").resolve())
        assert a.title == "Notes from a" and a.metadata["tags"] == ["people", "lisbon"]
        assert a.metadata["date"] == "2026-01-02" and "---" not in a.text and "tags:" not in a.text


def test_delete_removes_a_document_and_the_entries_nothing_else_uses(tmp_path):
    with _store(tmp_path) as rag:
        rag.ingest([{"id": "alice", "text": ALICE}, {"id": "bob", "text": BOB}])
        alice_keys = [r.key for r in rag.index.records() if r.doc_id == "alice"]
        report = rag.delete(["alice", "nobody"])
        assert (report.documents, report.entries_retired, report.missing) == (1, len(alice_keys), ("nobody",))
        assert {r.doc_id for r in rag.index.records()} == {"bob"} and all(k not in rag.store for k in alice_keys)
        assert rag.retrieve("Where was Alice Marrow born?", k=2)[0].record.doc_id == "bob"
    with pytest.raises(RequestError, match="document ids"):
        HypicRAG.from_store(tmp_path / "store").delete([])


def test_a_list_mixing_paths_and_texts_is_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(ALICE)
    with _store(tmp_path) as rag:
        with pytest.raises(RequestError, match="mix file paths"):
            rag.ingest([str(path), BOB])
        report = rag.ingest([path, {"id": "bob", "text": BOB}])  # paths with dicts: unambiguous
        assert report.documents_new == 2


def test_cli_delete(tmp_path):
    with _store(tmp_path) as rag:
        rag.ingest([{"id": "alice", "text": ALICE}, {"id": "bob", "text": BOB}])
    run = subprocess.run([sys.executable, "-m", "hypic_rag.cli.main", "delete", "--store", str(tmp_path / "store"),
                          "alice", "ghost"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "deleted 1 documents" in run.stdout and "not in the store: ghost" in run.stderr
    with HypicRAG.from_store(tmp_path / "store") as rag:
        assert {r.doc_id for r in rag.index.records()} == {"bob"}
