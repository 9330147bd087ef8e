"""hypic_adaptive: hypic's seams, then fresh K/V for the cached tokens the question reads most."""

import pytest
import torch

from conftest import get_model, random_ids, shipped_model
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.executor import cache_ops, compose
from hypic_rag.executor.adaptive_recompute import WARMUP_TOKENS, patch_spans, plan_patches
from hypic_rag.executor.attention_probe import last_query_attention
from hypic_rag.models.registry import model_spec as spec_of

PREFIX = [1, 2, 3]
FAMILIES = ["qwen3_5", "kimi_linear", "bamba", "lfm2", "minimax", "zamba2"]


def executor(model, mode="hypic_adaptive", tokenizer=None, prefix=PREFIX, **kw):
    return HypicExecutor(model, tokenizer, config=ExecutorConfig(mode=mode, **kw), shared_prefix=prefix)


def recorded_plans(monkeypatch) -> list:
    """The plan of every hypic_adaptive request from here on, in order."""
    plans = []
    real = compose.recompute_read_tokens

    def recorded(*args):
        logits, plan = real(*args)
        plans.append(plan)
        return logits, plan

    monkeypatch.setattr(compose, "recompute_read_tokens", recorded)
    return plans


def test_the_plan_takes_the_heaviest_eligible_tokens_with_their_warmup_within_the_budget():
    weights = torch.zeros(100)
    weights[[50, 53, 80, 30, 12]] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    eligible = torch.ones(100, dtype=torch.bool)
    eligible[30] = False  # a seam token: fresh already
    spans, picks = plan_patches(weights, eligible, budget_tokens=22, first=10, warmup=8)
    # 50 costs [42, 50] (9), 53 only [51, 53] (3), 80 [72, 80] (9): 21 <= 22; 12 would cost 3 more
    assert picks == (50, 53, 80) and spans == ((42, 54), (72, 81))
    spans, picks = plan_patches(weights, eligible, budget_tokens=40, first=10, warmup=8)
    assert picks == (12, 50, 53, 80) and spans[0] == (10, 13)  # a warm-up never starts before `first`
    assert plan_patches(weights, eligible, budget_tokens=2, first=10, warmup=8) == ((), ())  # nothing fits
    assert plan_patches(torch.zeros(100), eligible, 50, 10) == ((), ())  # nothing read: nothing to do


@pytest.mark.parametrize("family", ["qwen3_5", "bamba", "minimax", "zamba2", "falcon_h1"])
def test_the_probe_records_what_eager_attention_reports_for_the_last_token(family):
    model = get_model(family)
    spec = spec_of(model)
    ids = torch.tensor(random_ids([40], seed=2))
    layers = {l.layer_idx for l in spec.attention}
    with last_query_attention(model, layers) as recorded:
        sdpa = model(input_ids=ids).logits
    model.set_attn_implementation("eager")
    try:
        out = model(input_ids=ids, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    assert torch.allclose(sdpa, out.logits, atol=1e-5)  # recording leaves the forward as it was
    assert set(recorded) == layers
    reported = [a for a in out.attentions  # the softmax attention layers', in order (MiniMax also lists its
                if a is not None and torch.allclose(a.sum(-1), torch.ones(()))]  # lightning layers' outputs)
    assert len(reported) == len(layers)
    for layer_idx, want in zip(sorted(layers), reported):
        probabilities, want = recorded[layer_idx], want[0, :, -1].sum(0)
        assert (probabilities - want).abs().max() < 1e-5


def test_the_probe_ignores_forwards_of_other_models():
    model, other = get_model("qwen3_5"), get_model("bamba")
    with last_query_attention(model, {l.layer_idx for l in spec_of(model).attention}) as recorded:
        other(input_ids=torch.tensor(random_ids([10], seed=1)))
    assert recorded == {}


@pytest.mark.parametrize("family", FAMILIES)
def test_a_span_from_a_true_zero_state_gives_full_recompute_keys_and_values(family):
    """From position 0 a zero state is the true one, so the picked rows must equal full recompute's,
    wherever they sit in cache order; every other row is left as it was."""
    model = get_model(family)
    spec = spec_of(model)
    if not spec.attention:
        pytest.skip("no attention layer")
    (tokens,) = random_ids([30], seed=4)
    full = cache_ops.new_cache(model)
    model(input_ids=torch.tensor([tokens]), past_key_values=full, use_cache=True)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))  # rows in a shuffled order
    wrong = cache_ops.new_cache(model)
    for layer in spec.attention:
        keys, values = cache_ops.kv(full, layer.layer_idx)
        cache_ops.append_kv(wrong, layer.layer_idx, torch.randn_like(keys)[:, :, order], values[:, :, order] * 0)
    before = {l.layer_idx: [t.clone() for t in cache_ops.kv(wrong, l.layer_idx)] for l in spec.attention}
    patch_spans(model, spec, wrong, order, tokens, spans=[(0, 20)], patched=[5, 12, 19])
    rows = {int(order.tolist().index(p)): p for p in (5, 12, 19)}
    for layer in spec.attention:
        for j in (0, 1):
            got, was, want = cache_ops.kv(wrong, layer.layer_idx)[j], before[layer.layer_idx][j], \
                cache_ops.kv(full, layer.layer_idx)[j]
            for row in range(30):
                expected = want[:, :, rows[row]] if row in rows else was[:, :, row]
                assert (got[:, :, row] - expected).abs().max() < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_a_budget_the_seams_fill_is_hypic(family):
    model = get_model(family)
    segs, q = random_ids([30, 25, 40], seed=3), random_ids([6], seed=4)[0]
    fixed = executor(model, mode="hypic").first_token_logits(segs, q)
    adaptive = executor(model, recompute_budget=0.0).first_token_logits(segs, q)
    assert (fixed - adaptive).abs().max() < 1e-4  # the question in its own forward: float order only


def test_requests_recompute_the_read_tokens_within_the_budget_and_decode(monkeypatch):
    model = get_model("qwen3_5")
    segs, q = random_ids([40, 40, 40, 40], seed=9), random_ids([5], seed=10)[0]
    fixed = executor(model, mode="hypic").generate(segs, q, max_new_tokens=6, ignore_eos=True)
    plans = recorded_plans(monkeypatch)
    adaptive = executor(model, recompute_budget=0.3).generate(segs, q, max_new_tokens=6, ignore_eos=True)
    (plan,) = plans
    recomputed = fixed.cached_tokens - adaptive.cached_tokens
    assert recomputed == plan.recomputed_tokens - plan.seam_tokens > 0
    assert plan.seam_tokens == 4 * 8 and plan.recomputed_tokens <= plan.budget_tokens == int(0.3 * 160)
    first, seams = len(PREFIX) + 40, {len(PREFIX) + 40 * i + k for i in range(4) for k in range(8)}
    assert plan.patched and all(t >= first and t not in seams for t in plan.patched)
    for t in plan.patched:  # inside a span, after its warm-up
        (a, b), = [(a, b) for a, b in plan.spans if a <= t < b]
        assert t - a >= WARMUP_TOKENS
    assert len(adaptive.token_ids) == 6


def first_token_kls(model, tok, device: str = "cpu") -> dict[str, float]:
    """First-token KL to full recompute, summed over 12 eight-document questions, of hypic w=8 and
    hypic_adaptive on `model` (the shipped one, on any device and dtype; tests/test_gpu.py runs it on CUDA)."""
    import torch.nn.functional as F

    from hypic_rag.config import PromptTemplate
    from hypic_rag.data.synthetic import make_dataset

    template, prefix = PromptTemplate(), [tok.bos_token_id]
    runs = {m: executor(model, mode=m, tokenizer=tok, prefix=prefix) for m in ("full_recompute", "hypic",
                                                                                "hypic_adaptive")}
    kl = {"hypic": 0.0, "hypic_adaptive": 0.0}
    for record in make_dataset(12, seed=2024, num_docs=8):
        segs = [tok.encode(template.segment.format(title=d["title"], text=d["text"]), add_special_tokens=False)
                for d in record["ctxs"]]
        q = tok.encode(template.question.format(question=record["question"]), add_special_tokens=False)
        ref = runs["full_recompute"].first_token_logits(segs, q).float().log_softmax(-1)
        for mode in kl:
            got = runs[mode].first_token_logits(segs, q)
            assert got.device.type == device
            kl[mode] += F.kl_div(got.float().log_softmax(-1), ref, log_target=True, reduction="sum").item()
    return kl


def test_on_the_shipped_model_it_moves_the_first_token_toward_full_recompute():
    """What the rung exists for, on the trained model (bench/held_out.py measures it on 500 questions
    per condition): eight documents, first-token KL to full recompute, hypic w=8 vs hypic_adaptive."""
    model, tok = shipped_model()
    kl = first_token_kls(model, tok)
    assert kl["hypic_adaptive"] < 0.5 * kl["hypic"]


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


def test_a_patch_the_trust_check_drops_leaves_the_request_as_if_nothing_was_patched(monkeypatch):
    from hypic_rag.executor import adaptive_recompute

    model = get_model("qwen3_5")
    segs, q = random_ids([40, 40, 40, 40], seed=9), random_ids([5], seed=10)[0]
    plans = recorded_plans(monkeypatch)
    ex = executor(model, recompute_budget=0.3)
    patched = ex.generate(segs, q, max_new_tokens=6, ignore_eos=True)
    monkeypatch.setattr(adaptive_recompute, "TRUST_KL", -1.0)  # every patch moves the answer "too far"
    dropped = ex.generate(segs, q, max_new_tokens=6, ignore_eos=True)
    monkeypatch.setattr(adaptive_recompute, "plan_patches", lambda *a, **k: ((), ()))
    unpatched = ex.generate(segs, q, max_new_tokens=6, ignore_eos=True)
    assert plans[0].kept and plans[0].spans and not plans[1].kept and plans[2].spans == ()
    assert not torch.equal(patched.first_token_logits, unpatched.first_token_logits)
    assert torch.equal(dropped.first_token_logits, unpatched.first_token_logits)
    assert dropped.token_ids == unpatched.token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_the_one_forward_span_pass_matches_a_forward_per_span(family, monkeypatch):
    """span_pass.spans_then_question against its reference: patch_spans, then the question alone;
    same next-token logits, same K/V rows and linear states left in the cache."""
    from hypic_rag.executor import adaptive_recompute

    model = get_model(family)
    segs, q = random_ids([40, 40, 40, 40], seed=11), random_ids([5], seed=12)[0]
    real = adaptive_recompute.spans_then_question
    seen = {}

    def reference(model, spec, cache, mixers, positions, token_at, spans, patched, question, start):
        adaptive_recompute.patch_spans(model, spec, cache, positions, token_at, spans, patched)
        return adaptive_recompute._question_logits(model, cache, question, start)

    def recorded(run):
        def call(model, spec, cache, *args):
            logits = run(model, spec, cache, *args)
            seen.setdefault(run, []).append((logits, spec, args[3], {
                l.layer_idx: cache_ops.kv(cache, l.layer_idx) for l in spec.attention}, cache_ops.linear_states(cache, spec)))
            return logits
        return call

    # two spans of one width (a batched run in the Gated DeltaNet recurrence) and a longer one
    plan = (((50, 59), (60, 69), (95, 107)), (58, 68, 100, 106))
    monkeypatch.setattr(adaptive_recompute, "plan_patches", lambda *a, **k: plan)
    ex = executor(model, recompute_budget=0.3)
    for run in (real, reference):
        monkeypatch.setattr(adaptive_recompute, "spans_then_question", recorded(run))
        ex.first_token_logits(segs, q)
    (fast, spec, spans, fast_kv, fast_linear), = seen[real]
    (slow, _, _, slow_kv, slow_linear), = seen[reference]
    assert spans == plan[0]
    assert (fast - slow).abs().max() < 1e-4
    for layer_idx, (keys, values) in fast_kv.items():
        assert keys.shape == slow_kv[layer_idx][0].shape
        assert (keys - slow_kv[layer_idx][0]).abs().max() < 1e-4
        assert (values - slow_kv[layer_idx][1]).abs().max() < 1e-4
    for layer_idx, (state, conv) in fast_linear.items():
        for a, b in zip((state, conv), slow_linear[layer_idx]):
            assert (a is None and b is None) or (a.float() - b.float()).abs().max() < 1e-4


def test_diagnose_measures_the_rung_as_requests_run_it():
    import torch.nn.functional as F

    model = get_model("qwen3_5")
    segs, q = random_ids([40, 40, 40, 40], seed=9), random_ids([5], seed=10)[0]
    ex = executor(model, recompute_budget=0.3)
    report = ex.diagnose(segs, q)
    fixed = ex.diagnose(segs, q, mode="hypic")
    full = ex.first_token_logits(segs, q, mode="full_recompute").log_softmax(-1)
    adaptive = ex.first_token_logits(segs, q).log_softmax(-1)
    assert report.mode == "hypic_adaptive" and report.recomputed_tokens > fixed.recomputed_tokens == 4 * 8
    want = F.kl_div(adaptive, full, log_target=True, reduction="sum").item()
    assert abs(report.first_token_kl - want) < 1e-4 * max(1.0, want)
    assert report.first_token_kl != fixed.first_token_kl
