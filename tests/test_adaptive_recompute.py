"""hypic_adaptive: seams, then seam extensions chosen by a probe within a token budget."""

import pytest
import torch
from transformers import DynamicCache

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.executor import cache_ops, compose
from hypic_rag.executor.adaptive_recompute import AdaptivePlan, plan_extensions
from hypic_rag.executor.seam_pass import _key_positions
from hypic_rag.types import SegmentEntry

PREFIX = [1, 2, 3]
FAMILIES = ["qwen3_5", "kimi_linear", "bamba", "lfm2", "minimax"]


def executor(model, mode="hypic_adaptive", **kw):
    return HypicExecutor(model, config=ExecutorConfig(mode=mode, **kw), shared_prefix=PREFIX)


def bare(length: int, seam: int) -> SegmentEntry:
    return SegmentEntry(token_ids=tuple(range(length)), seam_tokens=seam, fingerprint="f", linear=(), attention=())


def forced(monkeypatch, extensions):
    """Make every request run these extensions (the probe and allocation are tested on their own)."""
    def plan(entries, scores, budget, step=4):
        return AdaptivePlan(tuple(e.seam_tokens for e in entries), tuple(extensions), tuple(scores), 0)
    monkeypatch.setattr(compose, "plan_extensions", plan)


def test_allocation_spends_the_budget_by_score_within_each_interior():
    entries = [bare(40, 8), bare(40, 8), bare(40, 8), bare(12, 8)]
    plan = plan_extensions(entries, [0.0, 0.2, 0.6, 0.9], budget=0.5)
    assert plan.budget_tokens == 66 and plan.recomputed_tokens == 66
    assert plan.extensions[0] == 0  # score 0: exact already
    assert plan.extensions[3] == 4  # its whole interior, no more
    assert plan.extensions[2] > plan.extensions[1] > 0  # diminishing returns share the rest by score
    assert plan.recomputed_tokens <= int(0.5 * 132)
    none = plan_extensions(entries, [0.0, 0.2, 0.6, 0.9], budget=0.1)  # less than the seams: seams only
    assert none.extensions == (0, 0, 0, 0) and none.seams == (8, 8, 8, 8)
    everything = plan_extensions(entries, [0.0, 0.2, 0.6, 0.9], budget=1.0)
    assert everything.extensions == (0, 32, 32, 4)
    alike = plan_extensions(entries[:3], [0.0, 0.0, 0.0], budget=0.4)  # no signal: the later segments alike
    assert alike.extensions == (0, 12, 12) and alike.scores == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_budget_the_seams_fill_is_hypic(family):
    model = get_model(family)
    segs, q = random_ids([30, 25, 40], seed=3), random_ids([6], seed=4)[0]
    fixed = executor(model, mode="hypic").first_token_logits(segs, q)
    adaptive = executor(model, recompute_budget=0.0).first_token_logits(segs, q)
    assert torch.equal(fixed, adaptive)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_probe_scores_the_first_segment_zero_and_the_rest_within_0_1(family, monkeypatch):
    seen = []
    real = compose.plan_extensions
    monkeypatch.setattr(compose, "plan_extensions", lambda e, s, b: seen.append(s) or real(e, s, b))
    executor(get_model(family)).first_token_logits(random_ids([30, 25, 40], seed=5), [7, 8, 9])
    (scores,) = seen
    assert scores[0] == 0.0 and all(0.0 <= s <= 1.0 for s in scores)
    if family != "lfm2":  # conv-only layers carry no state across a segment
        assert max(scores) > 0.0


class Composed:
    """The cache a cached rung leaves (prefix, then every segment), as compose_segments builds it,
    with its K/V rows put in position order (the seam pass appends the seams after the interiors)."""

    def __init__(self, model, ex, segs, mode, monkeypatch):
        layouts = []
        real = compose.batched_seam_pass

        def recorded(model, spec, cache, entries, prefix_length, *args):
            layouts.append(_key_positions(entries, prefix_length))
            return real(model, spec, cache, entries, prefix_length, *args)

        monkeypatch.setattr(compose, "batched_seam_pass", recorded)
        entries = [ex.ensure(s)[0] for s in segs]
        self.cache = ex._start_cache()
        self.report = compose.compose_segments(model, ex.spec, ex.rotary_emb, self.cache, entries, ex._mode(mode),
                                               len(PREFIX), ex.mixers, True, None, ex.config.recompute_budget)
        keys, seams = layouts[-1]
        self.order = torch.argsort(torch.tensor(keys + seams))
        monkeypatch.setattr(compose, "batched_seam_pass", real)

    def state(self, layer: int) -> torch.Tensor:
        return cache_ops.recurrent_state(self.cache, layer).float()

    def kv(self, layer: int, j: int) -> torch.Tensor:
        return cache_ops.kv(self.cache, layer)[j][..., self.order, :]


def hypic_and_extended(family, seed, extensions, monkeypatch):
    """Segments of 30, 25 and 40 tokens composed by hypic and with these extensions."""
    model = get_model(family)
    ex = executor(model)
    segs = random_ids([30, 25, 40], seed=seed)
    fixed = Composed(model, ex, segs, "hypic", monkeypatch)
    forced(monkeypatch, extensions)
    return model, ex, segs, fixed, Composed(model, ex, segs, "hypic_adaptive", monkeypatch)


@pytest.mark.parametrize("family", ["qwen3_5", "kimi_linear", "bamba"])
def test_extending_only_the_last_segment_leaves_the_linear_states_of_hypic(family, monkeypatch):
    """The extension is a branch: its end state is dropped, the interior advances the state at w."""
    model, ex, segs, fixed, adaptive = hypic_and_extended(family, 6, [0, 0, 12], monkeypatch)
    assert adaptive.report.recomputed_tokens == 3 * 8 + 12
    for layer in ex.spec.linear:
        assert (fixed.state(layer.layer_idx) - adaptive.state(layer.layer_idx)).abs().max() < 1e-5
    start = len(PREFIX) + 30 + 25 + 8  # the extension's rows: fresh K/V, not the cached ones
    for layer in ex.spec.attention:
        diff = (fixed.kv(layer.layer_idx, 1) - adaptive.kv(layer.layer_idx, 1)).abs().amax(dim=(0, 1, 3))
        outside = torch.cat([diff[:start], diff[start + 12:]]).max()
        assert outside < 1e-5 and diff[start: start + 12].max() > 10 * outside


@pytest.mark.parametrize("family", ["qwen3_5", "kimi_linear", "bamba"])
def test_an_extension_over_a_whole_segment_gives_its_full_recompute_keys_and_values(family, monkeypatch):
    # segment 1: seam 8 + the 17 tokens after it
    model, ex, segs, fixed, adaptive = hypic_and_extended(family, 8, [0, 17, 0], monkeypatch)
    full = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([PREFIX + [t for s in segs for t in s]]), past_key_values=full, use_cache=True)
    rows = slice(len(PREFIX) + 30, len(PREFIX) + 55)
    for layer in ex.spec.attention:
        for j in (0, 1):
            want = cache_ops.kv(full, layer.layer_idx)[j][..., rows, :]
            error = (adaptive.kv(layer.layer_idx, j)[..., rows, :] - want).abs().max()
            assert error < 1e-5
    last = ex.spec.attention[-1].layer_idx
    assert (fixed.kv(last, 1)[..., rows, :] - cache_ops.kv(full, last)[1][..., rows, :]).abs().max() > 10 * error


def test_requests_report_the_tokens_they_recompute_and_decode():
    model = get_model("qwen3_5")
    segs, q = random_ids([40, 40, 40, 40], seed=9), random_ids([5], seed=10)[0]
    fixed = executor(model, mode="hypic").generate(segs, q, max_new_tokens=6, ignore_eos=True)
    adaptive = executor(model, recompute_budget=0.3).generate(segs, q, max_new_tokens=6, ignore_eos=True)
    recomputed = fixed.cached_tokens - adaptive.cached_tokens
    assert recomputed == int(0.3 * 160) - 4 * 8  # the whole extension budget, on top of the seams
    assert len(adaptive.token_ids) == 6


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(RequestError, match="recompute_budget"):
        ExecutorConfig(recompute_budget=1.5)
    with pytest.raises(RequestError, match="batched_seams=True"):
        executor(get_model("qwen3_5"), batched_seams=False).first_token_logits(random_ids([20, 20], seed=1), [5])


def test_the_api_runs_the_rung_per_request_on_a_hypic_store():
    from conftest import demo_docs, demo_rag

    rag = demo_rag(4)
    question = f"What is the home city of {demo_docs(4)[2]['title']}?"
    fixed = rag.query(question, k=4, mode="hypic")
    adaptive = rag.query(question, k=4, mode="hypic_adaptive")
    assert adaptive.segment_ids == fixed.segment_ids and adaptive.generation.segment_misses == 0
    assert adaptive.generation.cached_tokens < fixed.generation.cached_tokens
