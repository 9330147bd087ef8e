"""Streaming generation, stopping rules, and the request result."""

import pytest

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor


@pytest.mark.parametrize("family", ["qwen3_5", "olmo_hybrid", "bailing_hybrid", "nemotron_h", "zamba2", "minimax"])
def test_stream_yields_tokens_then_result_matching_full_recompute(family):
    model = get_model(family)
    *segs, q = random_ids([30, 30, 5], seed=7)
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=30, max_new_tokens=6))
    events = list(ex.stream(segs, q))
    tokens = [e.token_id for e in events if e.token_id is not None]
    result = events[-1].result
    assert result is not None and all(e.result is None for e in events[:-1])
    assert tuple(tokens) == result.token_ids and 1 <= len(tokens) <= 6
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute", max_new_tokens=6)).generate(segs, q)
    assert full.token_ids == result.token_ids  # seam covers every segment: identical greedy output
    assert result.timings.ttft > 0 and result.prompt_tokens == 65
    assert result.segment_misses == 2 and result.segment_hits == 0
    again = ex.generate(segs, q)
    assert again.segment_hits == 2 and again.token_ids == result.token_ids


def test_stops_on_eos():
    model = get_model("bamba")
    *segs, q = random_ids([20, 4], seed=8)
    ex = HypicExecutor(model, config=ExecutorConfig(max_new_tokens=5))
    first = ex.generate(segs, q, max_new_tokens=1).token_ids[0]
    ex.eos_ids = frozenset({first})
    result = ex.generate(segs, q, max_new_tokens=5)
    assert result.token_ids == (first,) and result.finish_reason == "eos"


def test_stops_at_max_new_tokens():
    model = get_model("lfm2")
    *segs, q = random_ids([20, 4], seed=9)
    ex = HypicExecutor(model, config=ExecutorConfig(max_new_tokens=3))
    result = ex.generate(segs, q, ignore_eos=True)
    assert len(result.token_ids) == 3 and result.finish_reason == "length"


def test_sampling_is_reproducible_with_a_seed():
    model = get_model("qwen3_5")
    *segs, q = random_ids([20, 4], seed=10)
    config = ExecutorConfig(temperature=1.5, top_p=0.9, seed=3, max_new_tokens=8)
    ex = HypicExecutor(model, config=config)
    first = ex.generate(segs, q, ignore_eos=True).token_ids
    assert len(first) == 8 and first == HypicExecutor(model, config=config).generate(segs, q, ignore_eos=True).token_ids


def test_request_without_segments_is_plain_prefill():
    model = get_model("qwen3_5")
    (q,) = random_ids([6], seed=11)
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute")).first_token_logits([], q)
    assert (HypicExecutor(model).first_token_logits([], q) - full).abs().max() < 1e-5


def test_decoding_is_set_per_call_without_another_executor():
    from conftest import demo_rag

    from hypic_rag.config import RequestOptions
    from hypic_rag.errors import RequestError

    rag = demo_rag(4)
    question = "What is the home city of the first person?"
    a = rag.query(question, k=2, max_new_tokens=6, temperature=1.5, top_p=0.9, seed=7)
    b = rag.query(question, k=2, max_new_tokens=6, temperature=1.5, top_p=0.9, seed=7)
    greedy = rag.query(question, k=2, max_new_tokens=6)
    assert a.generation.token_ids == b.generation.token_ids and rag._executors == {}
    assert greedy.generation.token_ids == rag.query(question, k=2, max_new_tokens=6).generation.token_ids
    with pytest.raises(RequestError, match="top_p"):
        rag.query(question, top_p=0.0)
    ex = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(max_new_tokens=2))
    *segs, q = random_ids([20, 4], seed=12)
    sampled = ex.generate(segs, q, options=RequestOptions(max_new_tokens=5, temperature=2.0, seed=1, ignore_eos=True))
    assert len(sampled.token_ids) == 5 and len(ex.generate(segs, q, ignore_eos=True).token_ids) == 2
