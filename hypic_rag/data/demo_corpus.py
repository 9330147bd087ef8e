"""The demo's corpus: retrieval at realistic sizes (what `hypic-rag demo` asks, assets/demo/rag_*.jsonl).

Documents of five paragraphs (400 to 500 tokens of the shipped tokenizer, the "Document: ..." header
included), each about one invented person with distractor sentences about others
(data.synthetic._long_document), eight per question: a query retrieves k = 8 segments out of the
corpus, about 3.5k prompt tokens. Questions are single-hop: the record's own, and one more fact of
another person of the record. `python -m hypic_rag.data.demo_corpus` rewrites the files; a test checks
the shipped ones equal what this builds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hypic_rag.data.synthetic import _VALUES, FACTS, context_text, make_corpus

DRAWN, KEPT, SEED, DOCS_PER_QUESTION, PARAGRAPHS = 300, 4, 2027, 8, 5
TOKEN_RANGE = (400, 500)  # eight documents and a question stay within the model's 4096 positions
CORPUS_FILE, QUESTIONS_FILE = "rag_corpus.jsonl", "rag_questions.jsonl"
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"


def build(tokenizer) -> tuple[list[dict], list[dict]]:
    """(documents, questions) of the demo corpus, measured with `tokenizer` (the shipped model's)."""
    low, high = TOKEN_RANGE

    def fits(doc: dict) -> bool:
        return low <= len(tokenizer(context_text(doc), add_special_tokens=False)["input_ids"]) <= high

    docs, asked = make_corpus(DRAWN, SEED, num_docs=DOCS_PER_QUESTION, paragraphs=PARAGRAPHS, two_hop_fraction=0.0,
                              keep=fits)
    asked = asked[:KEPT]  # the first KEPT records whose eight documents all fit
    docs = [d for d in docs if any(d["title"] in q["gold"] for q in asked)]
    by_title = {d["title"]: d for d in docs}
    rng = random.Random(SEED)
    questions = []
    for q in asked:
        questions.append(q)
        other = rng.choice([t for t in q["gold"] if t not in q["question"]])
        kind = rng.choice(list(FACTS))
        fact, ask = FACTS[kind]
        value = next(v for v in _VALUES[kind] if fact.format(n=other, v=v) in by_title[other]["text"])
        questions.append({"question": ask.format(n=other), "answers": [value], "hops": 1, "gold": q["gold"]})
    return docs, questions


def main() -> None:
    from transformers import AutoTokenizer

    from hypic_rag.api import SHIPPED_MODEL

    docs, questions = build(AutoTokenizer.from_pretrained(SHIPPED_MODEL))
    for name, rows in ((CORPUS_FILE, docs), (QUESTIONS_FILE, questions)):
        (DEMO_DIR / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(docs)} documents, {len(questions)} questions in {DEMO_DIR}")


if __name__ == "__main__":
    main()
