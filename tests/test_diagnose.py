"""Per-layer divergence diagnostics: zero where hypic is exact, ordered along the ladder, in the API and CLI."""

import json

import pytest

from conftest import demo_docs, demo_rag, get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError


def executor(family="qwen3_5", seam=8):
    return HypicExecutor(get_model(family), config=ExecutorConfig(seam_tokens=seam))


def test_exact_requests_diagnose_as_exact_at_every_layer():
    ex = executor()
    seg, q = random_ids([57, 7], seed=1)
    one = ex.diagnose([seg], q)  # one segment: hypic equals full recompute
    assert len(one.layers) == 4 and one.first_over is None
    assert max(l.relative_error for l in one.layers) < 1e-4 and one.first_token_kl < 1e-6  # fp32 rounding of E/M
    *segs, q = random_ids([23, 31, 17, 6], seed=3)
    covered = executor(seam=31).diagnose(segs, q)  # seams cover every segment
    # every segment is a seam, the first one's after the shared prefix
    assert max(l.relative_error for l in covered.layers) < 1e-4 and covered.recomputed_tokens == 23 + 31 + 17


def test_divergence_grows_down_the_ladder_and_names_the_first_layer_over():
    *segs, q = random_ids([48, 37, 52, 41, 8], seed=100)
    ex = executor()
    hypic = ex.diagnose(segs, q, threshold=1e-3)
    addition = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(mode="pic_addition")).diagnose(
        segs, q, threshold=1e-3)
    assert addition.layers[-1].relative_error > hypic.layers[-1].relative_error > 0
    assert addition.first_token_kl > hypic.first_token_kl
    first = addition.first_over
    assert first is not None and addition.layers[first].relative_error > 1e-3
    assert all(l.relative_error <= 1e-3 for l in addition.layers[:first])
    assert [l.kind for l in hypic.layers] == ["linear", "linear", "linear", "attention"]


@pytest.mark.parametrize("family", ["bamba", "kimi_linear", "minimax"])
def test_every_family_diagnoses(family):
    *segs, q = random_ids([40, 30, 6], seed=5)
    d = executor(family).diagnose(segs, q)
    assert len(d.layers) == len(get_model(family).model.layers) and all(l.relative_error >= 0 for l in d.layers)


def test_bad_requests_are_refused():
    ex = executor()
    seg, q = random_ids([20, 4])
    with pytest.raises(RequestError, match="caches no segments"):
        ex.diagnose([seg], q, mode="full_recompute")
    with pytest.raises(RequestError, match="threshold"):
        ex.diagnose([seg], q, threshold=0)


def test_the_store_diagnoses_a_question_with_a_table_that_fits_80_columns():
    rag = demo_rag(12)
    name = demo_docs(12)[3]["title"]
    d = rag.diagnose(f"What is the home city of {name}?", k=4)
    assert d.mode == "hypic" and len(d.layers) == 8 and d.prompt_tokens > 100
    table = d.table()
    assert len(table.splitlines()) == 8 + 3 and all(len(line) <= 80 for line in table.splitlines())
    assert json.loads(json.dumps(d.to_dict()))["layers"][7]["kind"] == "attention"
    worse = rag.diagnose(f"What is the home city of {name}?", k=4, mode="pic_addition")
    assert worse.layers[-1].relative_error > d.layers[-1].relative_error


@pytest.mark.parametrize("mode", ["pic_addition", "pic_transition", "pic_transition_rope", "hypic"])
def test_every_rungs_table_fits_80_columns(mode):
    *segs, q = random_ids([30, 30, 5], seed=9)
    seam = 8 if mode == "hypic" else 0
    ex = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(mode=mode, seam_tokens=seam))
    table = ex.diagnose(segs, q, threshold=1e-6).table()
    assert table.startswith(mode) and all(len(line) <= 80 for line in table.splitlines()), table
