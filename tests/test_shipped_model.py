"""The shipped model answers what it was trained to answer, with full recompute and through hypic.

A broken checkpoint, a tokenizer that drifted from it, or a composition bug that only shows on a
trained model (random weights hide most) fails here."""

from conftest import shipped_model

from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.api import first_line
from hypic_rag.config import PromptTemplate
from hypic_rag.data.scoring import exact_match
from hypic_rag.data.synthetic import make_dataset


def hits_of(records, modes=(("full_recompute", 0), ("hypic", 8))):
    model, tokenizer = shipped_model()
    template = PromptTemplate()
    hits = {}
    for mode, seam in modes:
        ex = HypicExecutor(model, tokenizer, ExecutorConfig(mode=mode, seam_tokens=seam, max_new_tokens=6),
                           [tokenizer.bos_token_id])
        hits[mode] = 0
        for r in records:
            segments = [tokenizer.encode(template.segment.format(title=d["title"], text=d["text"]),
                                         add_special_tokens=False) for d in r["ctxs"]]
            question = tokenizer.encode(template.question.format(question=r["question"]), add_special_tokens=False)
            hits[mode] += exact_match(first_line(ex.generate(segments, question).text or ""), r["answers"])
    return hits


def test_single_hop_questions_over_four_documents_are_answered_by_full_recompute_and_hypic():
    records = [r for r in make_dataset(32, seed=31, num_docs=4) if r["hops"] == 1][:20]
    hits = hits_of(records)
    # bench/results/accuracy.md: single-hop EM 0.961 (full) and 0.956 (hypic w=8) over 386 such questions
    assert len(records) == 20
    assert hits["full_recompute"] >= 18 and hits["hypic"] >= 18, hits


def test_single_hop_questions_over_eight_long_documents_are_answered():
    """The demo's retrieval size: 8 documents of five paragraphs with distractors, ~3.5k tokens
    (bench/results/accuracy_long.md measures 200 such questions)."""
    records = make_dataset(10, seed=32, num_docs=8, two_hop_fraction=0.0, paragraphs=5)
    hits = hits_of(records)
    assert hits["full_recompute"] >= 9 and hits["hypic"] >= 9, hits
