"""Batched cache-miss prefill: one forward per group of equal-length misses, same entries as one by one."""

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.executor.miss_prefill import batched_precompute, length_batches
from hypic_rag.store.memory import on_device


def max_entry_diff(a, b):
    worst = 0.0
    for x, y in zip(a.linear, b.linear):
        for s, t in ((x.end_state, y.end_state), (x.interior_state, y.interior_state),
                     (x.interior_operator, y.interior_operator), (x.conv_tail, y.conv_tail)):
            assert (s is None) == (t is None)
            if s is not None:
                worst = max(worst, (s - t).abs().max().item())
    for x, y in zip(a.attention, b.attention):
        worst = max(worst, (x.keys - y.keys).abs().max().item(), (x.values - y.values).abs().max().item())
    return worst


def test_batched_entries_equal_one_by_one(hybrid):
    _, model = hybrid
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=6), shared_prefix=random_ids([5], seed=20)[0])
    segs = random_ids([33, 33, 33, 21], seed=21)
    batched = ex.precompute_many(segs)
    assert [e.token_ids for e in batched] == [tuple(s) for s in segs]
    for seg, entry in zip(segs, batched):
        assert max_entry_diff(ex.precompute(seg), entry) < 1e-5


def test_length_batches_groups_equal_lengths_up_to_the_batch_size():
    segs = [(1,) * n for n in (4, 5, 4, 4, 5, 3)]
    groups = length_batches(segs, max_batch=2)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert all(len({len(segs[i]) for i in g}) == 1 and len(g) <= 2 for g in groups)
    assert groups[0] == [0, 2]


def test_request_misses_go_through_the_miss_prefill_once_each():
    model = get_model("qwen3_5")
    calls = []

    ex = None

    def counting(segments):
        calls.append(len(segments))
        return batched_precompute(ex, segments)

    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=4, max_new_tokens=2), miss_prefill=counting)
    a, b, c, q = random_ids([30, 30, 18, 5], seed=22)
    result = ex.generate([a, b, a, c], q)
    assert calls == [3] and result.segment_misses == 4 and result.segment_hits == 0
    again = ex.generate([a, b, a, c], q)
    assert calls == [3] and again.segment_hits == 4
    serial = HypicExecutor(model, config=ExecutorConfig(seam_tokens=4, max_new_tokens=2, miss_batch_size=1))
    assert (serial.first_token_logits([a, b, a, c], q) - result.first_token_logits).abs().max() < 1e-5


def test_entries_from_another_model_are_refused():
    model, other = get_model("qwen3_5"), get_model("qwen3_next")
    foreign = HypicExecutor(other, config=ExecutorConfig(seam_tokens=4))
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=4),
                       miss_prefill=foreign.precompute_many)
    a, q = random_ids([20, 4], seed=23)
    with pytest.raises(ValueError, match="rebuild the store"):
        ex.generate([a], q, max_new_tokens=1)


def test_miss_batch_size_is_validated():
    with pytest.raises(ValueError, match="miss_batch_size"):
        ExecutorConfig(miss_batch_size=0)


def test_on_device_moves_only_when_needed():
    model = get_model("qwen3_5")
    entry = HypicExecutor(model).precompute(random_ids([12])[0])
    assert on_device(entry, torch.device("cpu")) is entry
    moved = on_device(entry, "meta")
    assert moved is not entry and moved.attention[0].keys.device.type == "meta"
