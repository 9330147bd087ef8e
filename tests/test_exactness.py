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
