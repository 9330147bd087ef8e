"""The demo's corpus is what its builder makes, at realistic retrieval sizes."""

import json

from hypic_rag.cli.demo import DEMO_DIR
from hypic_rag.data import demo_corpus
from hypic_rag.data.synthetic import FACTS, context_text


def shipped(name):
    return [json.loads(l) for l in (DEMO_DIR / name).read_text().splitlines() if l.strip()]


def test_the_shipped_files_are_what_the_builder_makes(tokenizer):
    docs, questions = demo_corpus.build(tokenizer)
    assert shipped(demo_corpus.CORPUS_FILE) == docs and shipped(demo_corpus.QUESTIONS_FILE) == questions


def test_documents_are_several_paragraphs_of_400_to_500_tokens_eight_per_question(tokenizer):
    docs, questions = shipped(demo_corpus.CORPUS_FILE), shipped(demo_corpus.QUESTIONS_FILE)
    for d in docs:
        assert 400 <= len(tokenizer(context_text(d), add_special_tokens=False)["input_ids"]) <= 500
        assert d["text"].count("\n\n") == demo_corpus.PARAGRAPHS - 1
    titles = {d["title"] for d in docs}
    assert len(questions) == 8 and all(len(q["gold"]) == 8 and set(q["gold"]) <= titles for q in questions)
    assert all(q["hops"] == 1 for q in questions)
    prompt = sum(len(tokenizer(context_text(d), add_special_tokens=False)["input_ids"]) for d in docs[:8])
    assert 3200 <= prompt <= 4000  # k = 8 of them: a realistic RAG prompt within the model's 4096 positions


def test_each_answer_is_stated_once_in_one_gold_document_among_distractors():
    docs = {d["title"]: d for d in shipped(demo_corpus.CORPUS_FILE)}
    for q in shipped(demo_corpus.QUESTIONS_FILE):
        stating = [t for t in q["gold"] for fact, ask in FACTS.values()
                   if t in q["question"] and ask.format(n=t) == q["question"]
                   and fact.format(n=t, v=q["answers"][0]) in docs[t]["text"]]
        assert len(stating) == 1
        # distractors: values of the same kind appear in the documents without answering
        others = sum(docs[t]["text"].count(" " + v) for t in q["gold"] for v in _same_kind(q))
        assert others > 8


def _same_kind(question):
    from hypic_rag.data.synthetic import _VALUES

    kind = next(k for k, (_, ask) in FACTS.items() if question["question"].startswith(ask.split("{n}")[0]))
    return _VALUES[kind]
