"""The lean runtime against the transformers path, for each ported family (Gated DeltaNet: Qwen3.5,
Qwen3-Next with its grouped projections and experts;
Mamba2: Bamba, Granite-4.0-H with experts and RoPE, and dense with NoPE, Falcon-H1 with attention
beside its Mamba2 mixer, plain and with every muP multiplier set): parity (full prefill,
every rung, hypic, 20 decoded tokens), bucket padding, capture safety and the ops a request
dispatches."""

import pytest
import torch

from conftest import get_model, random_ids, shipped_model
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.config import Mode
from hypic_rag.errors import UnsupportedModelError
from hypic_rag.runtime.dispatch_count import kernel_ops as _ops
from hypic_rag.runtime.lean_request import LeanRuntime
from hypic_rag.runtime.scan import affine_prefix, affine_prefix_ref, scalar_prefix, tensor_core_fp32
from hypic_rag.runtime.request_inputs import Parts, RequestInputs
from hypic_rag.runtime.seam_chain import plan_request, run_planned

PREFIX = (0, 5, 9)
TOL = 1e-4


TINY = {"tiny qwen3_5": "qwen3_5", "tiny qwen3_next": "qwen3_next", "tiny falcon_h1": "falcon_h1",
        "tiny falcon_h1 mup": "falcon_h1_mup", "tiny bamba": "bamba", "tiny granite": "granitemoehybrid",
        "tiny granite dense": "granitemoehybrid_dense"}
PORTED = list(TINY) + ["shipped"]


def _models():
    model, _ = shipped_model()
    return {**{name: get_model(family) for name, family in TINY.items()}, "shipped": model}


def _transformers_steps(executor, segs, q, mode, steps):
    """First-token logits and the next `steps` greedy steps' logits on the transformers path."""
    filled = executor._fill(tuple(map(tuple, segs)), tuple(q), mode)
    cache, logits, position, out = filled.cache, filled.logits.float(), filled.position, [filled.logits.float()]
    for _ in range(steps):
        token = int(torch.argmax(logits))
        with torch.no_grad():
            logits = executor.model(input_ids=torch.tensor([[token]]), past_key_values=cache,
                                    position_ids=torch.tensor([[position]]), use_cache=True).logits[0, -1].float()
        position += 1
        out.append(logits)
    return out


def _lean_steps(runtime, logits, state, steps):
    out = [logits]
    for _ in range(steps):
        logits = runtime.step(state, int(torch.argmax(logits)))
        out.append(logits)
    return out


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("name", PORTED)
def test_full_prefill_and_20_decoded_tokens_match_transformers(name):
    model = _models()[name]
    vocab = model.config.get_text_config(decoder=True).vocab_size
    segs, q = random_ids([40, 33, 25], seed=1, vocab=vocab), random_ids([7], seed=2, vocab=vocab)[0]
    reference = _transformers_steps(HypicExecutor(model, config=ExecutorConfig(runtime="transformers"), shared_prefix=PREFIX),
                                    segs, q, Mode.FULL_RECOMPUTE, 20)
    runtime = LeanRuntime(model, PREFIX)
    logits, state = runtime.prefill([t for s in segs for t in s] + q)
    assert _max_diff(_lean_steps(runtime, logits, state, 20), reference) < TOL


@pytest.mark.parametrize("name", PORTED)
@pytest.mark.parametrize("lengths,question,seam", [
    ([30, 25, 40, 33], 6, 8),    # question shorter than the seam: the question's run is padded
    ([20, 24], 19, 8),           # two segments, question longer than the seam: the seam's run is padded
    ([30, 10, 31, 9, 28], 5, 8),  # interiors shorter than the conv kernel: fresh seam columns in the tails
    ([50, 50, 50], 12, 16),
])
def test_hypic_request_and_decoding_match_the_transformers_path(name, lengths, question, seam):
    model = _models()[name]
    vocab = model.config.get_text_config(decoder=True).vocab_size
    segs, q = random_ids(lengths, seed=len(lengths), vocab=vocab), random_ids([question], seed=9, vocab=vocab)[0]
    config = ExecutorConfig(mode="hypic", seam_tokens=seam, runtime="transformers")
    executor = HypicExecutor(model, config=config, shared_prefix=PREFIX)
    sequential = HypicExecutor(model, config=ExecutorConfig(mode="hypic", seam_tokens=seam, batched_seams=False,
                                                            runtime="transformers"), shared_prefix=PREFIX)
    reference = _transformers_steps(executor, segs, q, Mode.HYPIC, 20)
    runtime = LeanRuntime(model, PREFIX)
    logits, state = runtime.hypic([executor.ensure(s)[0] for s in segs], q)
    assert _max_diff(_lean_steps(runtime, logits, state, 20), reference) < TOL
    assert float((logits - sequential.first_token_logits(segs, q)).abs().max()) < TOL  # one seam forward each


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_a_request_padded_into_a_larger_bucket_gives_the_same_logits(family):
    model = get_model(family)
    segs, q = random_ids([30, 25, 40], seed=4), random_ids([5], seed=5)[0]
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8), shared_prefix=PREFIX)
    entries = [executor.ensure(s)[0] for s in segs]
    runtime = LeanRuntime(model, PREFIX)
    exact, _ = runtime.hypic(entries, q)
    for width in (16, 64):  # every run padded with steps that neither decay nor write
        padded, _ = runtime.hypic(entries, q, run_width=width)
        assert float((padded - exact).abs().max()) < 1e-5


def test_tf32_for_the_chain_is_scoped_to_cuda_and_restored():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with tensor_core_fp32(torch.device("cpu")):
        assert matmul.fp32_precision == before  # the CPU path is untouched
    with tensor_core_fp32(torch.device("cuda")):  # a flag only: no CUDA device needed to set it
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    with pytest.raises(ValueError), tensor_core_fp32(torch.device("cuda")):
        raise ValueError("a request that fails inside the block")
    assert matmul.fp32_precision == before and matmul.allow_tf32 is False  # both APIs still readable


def test_the_scan_equals_the_sequential_composition_at_any_depth():
    g = torch.Generator().manual_seed(0)
    for maps in (1, 3, 8, 13):
        p = torch.randn(maps, 2, 6, 6, generator=g) * 0.4
        q = torch.randn(maps, 2, 6, 5, generator=g)
        ref_p, ref_q = affine_prefix_ref(p, q)
        for steps in (0, 5):  # as many steps as the maps need, or more (a padded bucket)
            fast_p, fast_q = affine_prefix(p, q, min_steps=steps)
            assert torch.allclose(fast_p, ref_p, atol=1e-5) and torch.allclose(fast_q, ref_q, atol=1e-5)
        decays = torch.rand(maps, 3, 1, 1, generator=g) * 0.9 + 0.05  # Mamba2: scalar decays in (0, 1)
        decays[0, 0] = 0.0  # a decay that underflowed: nothing before it survives
        q = torch.randn(maps, 3, 1, 7, generator=g)
        ref_p, ref_q = affine_prefix_ref(decays, q)
        fast_p, fast_q = scalar_prefix(decays, q)
        assert torch.allclose(fast_p, ref_p, atol=1e-6) and torch.allclose(fast_q, ref_q, atol=1e-5)


def _request_fn(runtime):
    def request(plan, inputs, prefix_state):
        return run_planned(runtime.lean, plan, inputs, prefix_state)[0]

    return request


def test_short_runs_through_the_step_kernel_give_the_chunk_kernels_request():
    """GatedDeltaRecurrence.recurrent_up_to sends the seam pass's runs (seams, the question) to the
    step function instead of the chunk one: the same logits, K/V and linear states."""
    model = get_model("qwen3_5")
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8), shared_prefix=PREFIX)
    runtime = LeanRuntime(model, PREFIX)
    segs, q = random_ids([24, 30, 18, 40], seed=16), random_ids([9], seed=17)[0]
    entries = [executor.ensure(s)[0] for s in segs]
    want, want_state = runtime.hypic(entries, q, graphs=False)
    (recurrence,) = {id(w.recurrence): w.recurrence for w in runtime.lean.linear_weights.values()}.values()
    recurrence.recurrent_up_to = 64
    got, state = runtime.hypic(entries, q, graphs=False)
    assert float((got - want).abs().max()) < 1e-5
    assert all(torch.allclose(state.recurrent[i], want_state.recurrent[i], atol=1e-5) for i in state.recurrent)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(state.keys, want_state.keys))


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1_mup", "bamba", "granitemoehybrid_dense"])
def test_the_planned_request_compiles_as_one_graph_no_host_synchronisation(family):
    """torch.compile(fullgraph=True) refuses a .item(), a data-dependent shape or any other graph break."""
    model = get_model(family)
    segs, q = random_ids([24, 24, 24, 24], seed=6), random_ids([6], seed=7)[0]
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8), shared_prefix=PREFIX)
    runtime = LeanRuntime(model, PREFIX)
    entries = runtime.anchored([executor.ensure(s)[0] for s in segs])
    inputs = RequestInputs.gather(Parts.of(runtime.lean, entries))
    request = _request_fn(runtime)
    # padded as a bucket pads it (runtime/request_graphs.py): the shapes a CUDA graph captures
    plan = plan_request(entries, q, len(PREFIX), runtime.lean.conv_width, torch.device("cpu"), run_width=16, tokens=64,
                        kept=120)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(request, fullgraph=True, backend="eager")(plan, inputs, runtime.prefix_state)
        assert float((compiled - request(plan, inputs, runtime.prefix_state)).abs().max()) == 0.0


@pytest.mark.parametrize("name", ["tiny qwen3_5", "tiny qwen3_next", "tiny falcon_h1 mup", "tiny bamba",
                                  "tiny granite dense", "shipped"])
def test_a_hypic_request_dispatches_about_one_forward_whatever_the_segment_count(name):
    model = _models()[name]
    vocab = model.config.get_text_config(decoder=True).vocab_size
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    runtime = LeanRuntime(model, PREFIX)
    q = random_ids([6], seed=3, vocab=vocab)[0]
    counts = {}
    for n in (4, 8, 16, 32):
        segs = random_ids([24] * n, seed=n, vocab=vocab)
        entries = [executor.ensure(s)[0] for s in segs]
        hypic = _ops(lambda: runtime.hypic(entries, q))
        plain = _ops(lambda: runtime.prefill(random_ids([n * 8 + len(q)], seed=1, vocab=vocab)[0]))
        assert hypic <= 1.5 * plain, (n, hypic, plain)  # one forward over the same new tokens
        transformers_path = _ops(lambda: executor.first_token_logits(segs, q))
        assert hypic < transformers_path
        counts[n] = hypic
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


@pytest.mark.parametrize("family", ["olmo_hybrid", "bailing_hybrid", "nemotron_h", "zamba2", "minimax"])
def test_families_not_ported_are_refused_by_the_lean_runtime(family):
    with pytest.raises(UnsupportedModelError, match="transformers path"):
        LeanRuntime(get_model(family))
    assert HypicExecutor(get_model(family), config=ExecutorConfig(runtime="auto")).lean is None


def test_families_not_ported_stay_on_the_transformers_path():
    with pytest.raises(UnsupportedModelError, match="transformers path"):
        LeanRuntime(get_model("zamba2"))
    runtime = LeanRuntime(get_model("qwen3_5"))
    executor = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(seam_tokens=8))
    one = [executor.ensure(random_ids([20], seed=1)[0])[0]]
    assert runtime.covers(one, [5, 6])  # one segment: its seam from the prefix
    short = [executor.ensure(random_ids([6], seed=1)[0])[0]]
    assert not runtime.covers(short, [5, 6])  # no interior after the seam: the transformers path


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid"])
def test_the_executor_runs_every_rung_and_decoding_on_the_lean_runtime_when_asked(family):
    """Full prefill, the prefix cache and hypic run on the lean runtime; the PIC rungs compose on the
    transformers path inside the same executor. Every rung decodes what the transformers path does."""
    model = get_model(family)
    segs, q = random_ids([30, 25, 40], seed=11), random_ids([6], seed=12)[0]
    for mode in Mode:
        plain = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="transformers"), shared_prefix=PREFIX)
        lean = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="lean"), shared_prefix=PREFIX,
                             store=plain.store)
        assert lean.lean is not None and plain.lean is None
        expected = plain.generate(segs, q, max_new_tokens=12, ignore_eos=True)
        got = lean.generate(segs, q, max_new_tokens=12, ignore_eos=True)
        assert got.token_ids == expected.token_ids and got.cached_tokens == expected.cached_tokens
        assert got.segment_hits + got.segment_misses == expected.segment_hits + expected.segment_misses
        assert float((got.first_token_logits - expected.first_token_logits).abs().max()) < TOL
    one = lean.generate(segs[:1], q, max_new_tokens=3)  # one segment: its seam from the prefix, same answer
    assert one.token_ids == plain.generate(segs[:1], q, max_new_tokens=3).token_ids
    with pytest.raises(UnsupportedModelError):
        HypicExecutor(get_model("zamba2"), config=ExecutorConfig(runtime="lean"))
    assert HypicExecutor(get_model("bamba")).lean is None  # auto on a CPU: the transformers path


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba"])
def test_the_prefix_cache_baseline_prefills_the_rest_in_one_forward_with_a_snapshot_at_every_boundary(family):
    model = get_model(family)
    pool = random_ids([30, 25, 40, 22, 35], seed=13)
    q = random_ids([6], seed=14)[0]
    lean = HypicExecutor(model, config=ExecutorConfig(mode="prefix_cache", runtime="lean"), shared_prefix=PREFIX)
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute", runtime="transformers"),
                         shared_prefix=PREFIX)
    first = lean.generate(pool[:4], q, max_new_tokens=8, ignore_eos=True)
    assert (first.segment_hits, first.segment_misses) == (0, 4) and len(lean.prefix_snapshots) == 4
    for segs in (pool[:2] + [pool[4]], pool[:4], pool[:3]):  # restores 2, 4 and 3 segments
        got = lean.generate(segs, q, max_new_tokens=8, ignore_eos=True)
        want = full.generate(segs, q, max_new_tokens=8, ignore_eos=True)
        assert got.token_ids == want.token_ids
        assert float((got.first_token_logits - want.first_token_logits).abs().max()) < TOL
    runtime = lean.lean
    ops_full = _ops(lambda: runtime.prefill([t for s in pool for t in s] + q))
    ops_prefix = _ops(lambda: runtime.prefix_fill(runtime.prefix_state.copy(), pool, q))
    assert ops_prefix <= 1.5 * ops_full  # one forward, not one per segment


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_bf16_runs_on_the_lean_runtime_as_on_a_gpu(family):
    from hypic_rag.models.tiny import tiny_model

    model = tiny_model(family).to(torch.bfloat16)  # its own copy: the shared tiny model stays fp32
    segs, q = random_ids([30, 25, 40], seed=15), random_ids([6], seed=16)[0]
    for mode in ("hypic", "full_recompute", "prefix_cache"):
        plain = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="transformers"), shared_prefix=PREFIX)
        lean = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="lean"), shared_prefix=PREFIX,
                             store=plain.store)
        want = plain.generate(segs, q, max_new_tokens=6, ignore_eos=True)
        got = lean.generate(segs, q, max_new_tokens=6, ignore_eos=True)
        assert got.token_ids == want.token_ids
        assert float((got.first_token_logits - want.first_token_logits).abs().max()) < 0.05


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid"])
def test_a_cold_requests_misses_precompute_in_one_forward_to_the_transformers_entries(family):
    """Segments of any lengths (shorter than the seam, shorter than the conv kernel, long), each after
    the shared prefix, in one forward: every entry equals executor/precompute.py's and passes the
    executor's entry checks."""
    model = get_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    runtime = LeanRuntime(model, PREFIX)
    segs = random_ids([30, 25, 40, 6, 8, 9, 2], seed=17)
    entries = runtime.precompute(segs, 8, executor.fingerprint.to_string())
    for seg, entry in zip(segs, entries):
        assert executor.checker.problem(entry, tuple(seg)) is None
        want = executor.precompute(seg)
        for got_layer, want_layer in zip(entry.linear, want.linear):
            for name in ("end_state", "interior_state", "interior_operator", "conv_tail"):
                got, expected = getattr(got_layer, name), getattr(want_layer, name)
                assert (got is None) == (expected is None), (name, len(seg))
                if got is not None:
                    assert float((got.float() - expected.float()).abs().max()) < TOL, (name, len(seg))
        for got_layer, want_layer in zip(entry.attention, want.attention):
            assert float((got_layer.keys - want_layer.keys).abs().max()) < TOL
            assert float((got_layer.values - want_layer.values).abs().max()) < TOL
    ops = _ops(lambda: runtime.precompute(segs, 8, "x"))
    assert ops <= 2 * _ops(lambda: runtime.prefill([t for s in segs for t in s]))  # one forward, not one per length


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_a_request_at_zero_hits_runs_its_misses_and_its_seams_on_the_lean_runtime(family):
    model = get_model(family)
    segs, q = random_ids([30, 25, 40, 33], seed=18), random_ids([6], seed=19)[0]
    plain = HypicExecutor(model, config=ExecutorConfig(mode="hypic", runtime="transformers"), shared_prefix=PREFIX)
    lean = HypicExecutor(model, config=ExecutorConfig(mode="hypic", runtime="lean"), shared_prefix=PREFIX)
    want = plain.generate(segs, q, max_new_tokens=8, ignore_eos=True)
    got = lean.generate(segs, q, max_new_tokens=8, ignore_eos=True)  # an empty store: every segment misses
    assert (got.segment_hits, got.segment_misses) == (0, 4) and len(lean.store) == 4
    assert got.token_ids == want.token_ids
    assert float((got.first_token_logits - want.first_token_logits).abs().max()) < TOL
    counts = {}
    for n in (3, 12):  # two forwards (the misses, then every seam and the question) whatever the segment count
        cold = HypicExecutor(model, config=ExecutorConfig(mode="hypic", runtime="lean"), shared_prefix=PREFIX)
        cold.generate(random_ids([20], seed=20), q, max_new_tokens=1)  # the entry checker's reference, built once
        many = random_ids([30] * n, seed=n)
        counts[n] = _ops(lambda: cold.first_token_logits(many, q))
        one_forward = _ops(lambda: cold.lean.prefill(random_ids([(n - 1) * 8 + len(q)], seed=1)[0]))
        assert counts[n] <= 3.5 * one_forward, (n, counts[n], one_forward)
    assert max(counts.values()) <= 1.1 * min(counts.values()), counts


def test_experts_are_captured_and_compiled_unless_their_implementation_synchronises():
    """Qwen3-Next's and Granite's experts run through transformers' modules. With its default
    grouped_mm implementation (tokens per expert counted on the device) a runtime captures and
    compiles as for a dense model; with "eager" (a loop over the experts hit, nonzero) it does
    neither: on a GPU each capture would fail over to eager."""
    from hypic_rag.models.tiny import tiny_model

    assert all(LeanRuntime(get_model(family)).lean.capture_safe for family in TINY.values())
    for family in ("qwen3_next", "granitemoehybrid"):
        model = tiny_model(family)
        model.set_experts_implementation("eager")
        runtime = LeanRuntime(model, PREFIX, compile_graphs=True)
        assert runtime.lean.capture_safe is False and runtime.compile_graphs is False
        assert runtime.captures is False and runtime.graphs is None
    assert LeanRuntime(get_model("qwen3_5"), PREFIX, compile_graphs=True).compile_graphs is True
