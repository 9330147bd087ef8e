import json

import pytest

from conftest import shipped_model
from hypic_rag.config import PromptTemplate
from hypic_rag.precompute.corpus import as_documents, load_corpus
from hypic_rag.precompute.segmenter import Segmenter


def segmenter(max_tokens=64):
    return Segmenter(shipped_model()[1], PromptTemplate(), max_tokens)


def test_paragraphs_are_packed_under_the_budget_and_tokenized_alone():
    text = "\n\n".join(f"Paragraph {i} says that Kamo likes plums and figs." for i in range(12))
    (doc,) = as_documents([{"id": "kamo", "title": "Kamo", "text": text}])
    segs = segmenter(64).split(doc)
    tok = shipped_model()[1]
    assert len(segs) > 1 and all(len(s.token_ids) <= 64 for s in segs)
    assert [s.segment_id for s in segs] == [f"kamo#{i}" for i in range(len(segs))]
    for s in segs:
        assert s.text.startswith("Document: Kamo\n")
        assert list(s.token_ids) == tok.encode(s.text, add_special_tokens=False)
    joined = " ".join(s.text for s in segs)
    assert all(f"Paragraph {i} " in joined for i in range(12))


def test_overlong_paragraph_is_split_by_sentences_then_tokens():
    long_sentence = " ".join(["word"] * 300)
    (doc,) = as_documents([long_sentence + ". Short one."])
    segs = segmenter(40).split(doc)
    assert len(segs) >= 5 and all(len(s.token_ids) <= 40 for s in segs)


def test_load_corpus_reads_txt_md_jsonl_and_reports_skips(tmp_path):
    (tmp_path / "a.txt").write_text("alpha text\n\nsecond paragraph")
    (tmp_path / "b.md").write_text("# Beta Title\n\nbody")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "c1", "text": "gamma", "title": "G"}) + "\n\n")
    (tmp_path / "empty.txt").write_text("   \n")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    report = load_corpus([tmp_path])
    by_id = {d.doc_id: d for d in report.documents}
    a, b = str((tmp_path / "a.txt").resolve()), str((tmp_path / "b.md").resolve())
    assert set(by_id) == {a, b, "c1"} and by_id[b].title == "Beta Title"
    assert any("empty.txt: empty" in s for s in report.skipped) and any("img.png" in s for s in report.skipped)


def test_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus([tmp_path / "nope"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="corpus file is empty"):
        load_corpus([tmp_path / "empty.txt"])
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match='needs an object with "id" and "text"'):
        load_corpus([tmp_path / "bad.jsonl"])
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_corpus([tmp_path / "broken.jsonl"])
    with pytest.raises(ValueError, match="document 0 is empty"):
        as_documents([""])
    with pytest.raises(ValueError, match="non-empty string or a dict"):
        as_documents([{"id": "x"}])
