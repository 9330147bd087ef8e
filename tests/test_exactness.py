"""Where hypic must equal full recompute exactly."""

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor


def logits(model, mode, segments, question, seam=8, shared_prefix=()):
    ex = HypicExecutor(model, config=ExecutorConfig(mode=mode, seam_tokens=seam), shared_prefix=shared_prefix)
    return ex.first_token_logits(segments, question)


def test_one_segment_hypic_equals_full_recompute(hybrid):
    _, model = hybrid
    seg, q = random_ids([57, 7], seed=1)
    full = logits(model, "full_recompute", [seg], q)
    assert (logits(model, "hypic", [seg], q) - full).abs().max() < 1e-4


def test_one_segment_after_shared_prefix_is_exact(hybrid):
    _, model = hybrid
    prefix, seg, q = random_ids([11, 40, 5], seed=2)
    full = logits(model, "full_recompute", [seg], q, shared_prefix=prefix)
    assert (logits(model, "hypic", [seg], q, shared_prefix=prefix) - full).abs().max() < 1e-4


def test_seam_covering_segments_equals_full_recompute(hybrid):
    _, model = hybrid
    *segs, q = random_ids([23, 31, 17, 6], seed=3)
    full = logits(model, "full_recompute", segs, q)
    composed = logits(model, "hypic", segs, q, seam=31)
    assert (composed - full).abs().max() < 1e-4


def test_context_matters_in_these_models(hybrid):
    """Guards the tests above against vacuity: other segments change the logits noticeably."""
    _, model = hybrid
    a, b, q = random_ids([40, 40, 6], seed=4)
    assert (logits(model, "full_recompute", [a, b], q) - logits(model, "full_recompute", [b], q)).abs().max() > 1e-3


@pytest.mark.parametrize("seam", [3, 4, 8])
def test_single_linear_layer_hypic_is_exact_and_addition_is_not(seam):
    """One GDN layer and no attention: the layer's inputs do not depend on context, so the operator,
    the interior state and a seam of w >= K - 1 tokens carry context exactly."""
    model = get_model("qwen3_5_linear_only")
    *segs, q = random_ids([30, 25, 19, 5], seed=5)
    full = logits(model, "full_recompute", segs, q)
    assert (logits(model, "hypic", segs, q, seam=seam) - full).abs().max() < 1e-5
    assert (logits(model, "pic_addition", segs, q) - full).abs().max() > 1e-3


def test_prefix_cache_mode_is_exact_and_reuses_prefixes():
    model = get_model("qwen3_5")
    a, b, c, q = random_ids([20, 21, 22, 4], seed=6)
    ex = HypicExecutor(model, config=ExecutorConfig(mode="prefix_cache"))
    full = logits(model, "full_recompute", [a, b, c], q)
    assert (ex.first_token_logits([a, b, c], q) - full).abs().max() < 1e-4
    result = ex.generate([a, b], q, max_new_tokens=1)
    assert result.segment_hits == 2 and result.cached_tokens == len(a) + len(b)
    result = ex.generate([b, a], q, max_new_tokens=1)
    assert result.segment_hits == 0


@pytest.mark.parametrize("runtime", ["transformers", "lean"])
def test_an_entry_stored_with_an_end_state_by_an_earlier_version_still_serves(runtime):
    """Entries no longer keep an end state (segment 0's seam is recomputed from the prefix); one an
    earlier version stored with it passes the checks and its end state is never read."""
    import dataclasses

    model = get_model("qwen3_5")
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime=runtime), shared_prefix=[1, 2, 3])
    *segs, q = random_ids([40, 30, 6], seed=31)
    reference = ex.first_token_logits(segs, q)
    key = ex.key_of(tuple(segs[0]))
    entry = ex.store.get(key)
    assert all(layer.end_state is None for layer in entry.linear)
    old = dataclasses.replace(entry, linear=tuple(
        dataclasses.replace(layer, end_state=torch.full_like(layer.interior_state, 7.0)) for layer in entry.linear))
    assert ex.checker.problem(old, tuple(segs[0])) is None
    ex.store.put(key, old)
    assert ex.store.get(key) is not None and ex.store.get(key).linear[0].end_state is not None
    assert torch.equal(ex.first_token_logits(segs, q), reference)
