import json

import pytest

from hypic_rag.data.scoring import exact_match, normalize, token_f1
from hypic_rag.data.synthetic import FACTS, load_records, make_corpus, make_dataset


def test_records_have_the_common_rag_format_and_are_deterministic():
    records = make_dataset(40, seed=3)
    assert records == make_dataset(40, seed=3) and records != make_dataset(40, seed=4)
    for r in records:
        assert set(r) >= {"question", "ctxs", "answers", "hops"}
        assert all(set(c) == {"title", "text"} for c in r["ctxs"])
        gold_text = " ".join(c["text"] for c in r["ctxs"])
        assert r["answers"][0] in gold_text  # the answer is in the retrieved documents
    assert {r["hops"] for r in records} == {1, 2}


def test_two_hop_answer_lives_in_the_mentors_document():
    r = next(r for r in make_dataset(40, seed=5) if r["hops"] == 2)
    person = r["question"].split("mentor of ")[1].rstrip("?").split(" ")[0]
    doc = next(c for c in r["ctxs"] if c["title"] == person)
    mentor = doc["text"].split(f"The mentor of {person} is ")[1].split(".")[0]
    assert r["answers"][0] in next(c for c in r["ctxs"] if c["title"] == mentor)["text"]


def test_each_question_shares_a_relation_word_with_the_sentence_that_answers_it():
    # a question whose wording shares nothing with its fact sentence (as "What is the job of X?" once did
    # with "X works as a Y.") asks the small model to learn a paraphrase before it can look anything up
    stop = {"what", "is", "the", "of", "a", "does", "to", "was", "in", "where", "{n}", "{v}"}

    def words(s):
        return {w.strip("?.").lower() for w in s.split()} - stop

    for kind, (sentence, question) in FACTS.items():
        assert words(sentence) & words(question), kind


def test_corpus_titles_are_unique():
    docs, questions = make_corpus(10, seed=1)
    assert len({d["id"] for d in docs}) == len(docs) and questions


def test_load_records_json_and_jsonl(tmp_path):
    records = make_dataset(3, seed=1)
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert load_records(tmp_path / "a.json") == records == load_records(tmp_path / "b.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}))
    with pytest.raises(ValueError, match="lacks question/ctxs/answers"):
        load_records(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="no such dataset file"):
        load_records(tmp_path / "missing.json")


def test_scoring():
    assert normalize("The  Red, car!") == "red car"
    assert exact_match("the Velmora.", ["Velmora"]) == 1.0 and exact_match("Velmora city", ["Velmora"]) == 0.0
    assert token_f1("Velmora city", ["Velmora"]) == pytest.approx(2 / 3)
    assert token_f1("nothing", ["Velmora", "nothing here"]) == pytest.approx(2 / 3)
    assert token_f1("x", ["y"]) == 0.0
