"""The CUDA path: fla's Triton kernels against the plain-torch recurrences, bf16 end to end, the GPU tier.

Skipped without a CUDA device (CI is CPU-only). On a CUDA machine with flash-linear-attention
installed, transformers routes the Gated DeltaNet / KDA recurrences to fla, and so does hypic's
operator extraction (it calls the function the model calls). These tests check that fla is really
the kernel in use, then compare what it produces with the pure-torch functions on the same inputs.
"""

from __future__ import annotations

import inspect
import sys
import tempfile

import pytest
import torch

from conftest import random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.models.registry import model_spec
from hypic_rag.models.tiny import tiny_model
from hypic_rag.models.families import gated_delta
from hypic_rag.ops.capture import RecurrenceCall
from test_transition import captured_calls

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

FLA_FAMILIES = ["qwen3_5", "qwen3_next", "kimi_linear"]
ALL_FAMILIES = FLA_FAMILIES + ["falcon_h1", "bamba"]
_MODELS: dict[tuple[str, torch.dtype], torch.nn.Module] = {}


def cuda_model(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    if (family, dtype) not in _MODELS:
        _MODELS[(family, dtype)] = tiny_model(family).to("cuda", dtype)
    return _MODELS[(family, dtype)]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12)).item()


def implementation_of(fn):
    """The callable a transformers hub-kernel wrapper routes to (fla's, or the torch function)."""
    while fn is not None:
        cells = inspect.getclosurevars(fn).nonlocals
        if "implementation" in cells:
            return cells["implementation"]
        fn = getattr(fn, "__wrapped__", None)
    return None


def chunk_fn(model):
    layer = model_spec(model).linear[0]
    return getattr(sys.modules[layer.modeling_module], layer.chunk_fn)


@pytest.mark.parametrize("family", FLA_FAMILIES)
def test_fla_kernel_is_in_use(family):
    pytest.importorskip("fla")
    impl = implementation_of(chunk_fn(cuda_model(family)))
    assert impl is not None and impl.__module__.startswith("fla."), impl


@pytest.mark.parametrize("family", FLA_FAMILIES)
@pytest.mark.parametrize("length,start", [(64, 0), (130, 8), (300, 17)])
def test_fla_interior_matches_torch_chunk_and_token_product(family, length, start):
    model = cuda_model(family)
    (ids,) = random_ids([length], seed=length)
    spec, calls = captured_calls(model, ids, device="cuda")
    for layer in spec.linear:
        call = calls[layer.layer_idx]
        fast = gated_delta.gated_delta_interior(call, start)
        plain = gated_delta.gated_delta_interior(RecurrenceCall(inspect.unwrap(call.fn), call.arguments), start)
        recurrent = inspect.unwrap(getattr(sys.modules[layer.modeling_module], layer.recurrent_fn))
        product = gated_delta.gated_delta_operator_ref(call, start, recurrent)
        assert torch.isfinite(fast.state).all() and torch.isfinite(fast.operator).all()
        assert rel_err(fast.state, plain.state) < 5e-3
        assert rel_err(fast.operator, plain.operator) < 5e-3
        assert rel_err(fast.operator, product) < 5e-3


def plain_torch_recurrences(model, monkeypatch):
    """Route the model's recurrences to transformers' own torch functions (they run on any device)."""
    layer = model_spec(model).linear[0]
    module = sys.modules[layer.modeling_module]
    for name in (layer.chunk_fn, layer.recurrent_fn):
        if name:
            monkeypatch.setattr(module, name, inspect.unwrap(getattr(module, name)))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_hypic_on_cuda_matches_the_cpu_path(family, monkeypatch):
    """hypic on CUDA (fla kernels where installed) computes what the CPU computes with the same
    weights, for a narrow seam (the approximation) and a seam covering every segment (exact)."""
    model = cuda_model(family)
    *segs, q = random_ids([70, 45, 90, 6], seed=3)
    logits = {}
    for seam in (8, 90):
        logits[seam] = HypicExecutor(model, config=ExecutorConfig(mode="hypic", seam_tokens=seam)).first_token_logits(segs, q)
        assert logits[seam].is_cuda
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute")).first_token_logits(segs, q)
    assert rel_err(logits[90], full) < 2e-3  # the seam covers every segment: exact up to tf32 kernels
    plain_torch_recurrences(model, monkeypatch)
    cpu = tiny_model(family)  # the same seed, so the same weights
    for seam in (8, 90):
        on_cpu = HypicExecutor(cpu, config=ExecutorConfig(mode="hypic", seam_tokens=seam)).first_token_logits(segs, q)
        assert rel_err(logits[seam].cpu(), on_cpu) < 5e-3


@pytest.mark.parametrize("family", FLA_FAMILIES)
def test_fla_executor_matches_pure_torch_executor(family, monkeypatch):
    model = cuda_model(family)
    *segs, q = random_ids([70, 45, 90, 6], seed=4)
    config = ExecutorConfig(mode="hypic", seam_tokens=8)
    fast = HypicExecutor(model, config=config)
    fast_logits = fast.first_token_logits(segs, q)
    fast_entry = fast.store.get(fast.key_of(segs[1]))
    plain_torch_recurrences(model, monkeypatch)
    plain = HypicExecutor(model, config=config)
    assert rel_err(plain.first_token_logits(segs, q), fast_logits) < 5e-3
    plain_entry = plain.store.get(plain.key_of(segs[1]))
    for a, b in zip(fast_entry.linear, plain_entry.linear):
        assert rel_err(a.interior_state, b.interior_state) < 5e-3
        assert rel_err(a.interior_operator, b.interior_operator) < 5e-3


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_bf16_hypic_agrees_with_bf16_full_recompute(family):
    model = cuda_model(family, torch.bfloat16)
    hypic = HypicExecutor(model, config=ExecutorConfig(mode="hypic", seam_tokens=8))
    full = HypicExecutor(model, config=ExecutorConfig(mode="full_recompute"))
    for seed in range(4):
        *segs, q = random_ids([64, 64, 64, 5], seed=10 + seed)
        a, b = hypic.first_token_logits(segs, q), full.first_token_logits(segs, q)
        kl = torch.nn.functional.kl_div(a.log_softmax(-1), b.log_softmax(-1), log_target=True, reduction="sum")
        assert kl.item() < 2e-2
    entry = hypic.store.get(hypic.key_of(segs[0]))
    assert all(layer.keys.dtype == torch.bfloat16 and layer.keys.is_cuda for layer in entry.attention)


def test_gpu_tier_keeps_hot_entries_on_the_device_and_promotes_from_host():
    from hypic_rag.store.tiered import StoreConfig, TieredStore

    model = cuda_model("qwen3_5")
    ex = HypicExecutor(model, config=ExecutorConfig(mode="hypic", seam_tokens=8))
    a, b = random_ids([80, 80], seed=5)
    entry_a, entry_b = ex.precompute(a), ex.precompute(b)
    with tempfile.TemporaryDirectory() as directory:
        store = TieredStore(directory, StoreConfig(device_bytes=int(entry_a.nbytes * 1.5), host_bytes=2**30))
        store.put(ex.key_of(a), entry_a)
        assert store.get(ex.key_of(a)).attention[0].keys.is_cuda
        store.put(ex.key_of(b), entry_b)  # a is demoted to the host tier
        got = store.get(ex.key_of(a))  # read from host, promoted back to the device
        assert got.attention[0].keys.is_cuda
        assert torch.equal(got.attention[0].keys, entry_a.attention[0].keys)


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "kimi_linear", "falcon_h1"])
def test_one_seam_pass_equals_a_forward_per_seam_on_cuda(family):
    model = cuda_model(family)
    *segs, q = random_ids([70, 45, 90, 30, 6], seed=6)
    one = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8)).first_token_logits(segs, q)
    each = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, batched_seams=False)).first_token_logits(segs, q)
    assert rel_err(one, each) < 2e-3  # fla's chunked and fused-recurrent kernels differ at tf32 level


LEAN_FAMILIES = ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid"]


@pytest.mark.parametrize("family", LEAN_FAMILIES)
def test_lean_runtime_on_cuda_matches_the_transformers_path_on_cuda(family):
    """Full prefill, the prefix-cache baseline, a cold hypic request (its misses precomputed on the lean
    runtime) and the same request warm, against transformers' forward on the same device."""
    from hypic_rag.runtime.lean_request import LeanRuntime  # noqa: F401  (the import path the executor takes)

    model = cuda_model(family)
    *segs, q = random_ids([70, 45, 90, 33, 6], seed=5)
    for mode in ("full_recompute", "prefix_cache", "hypic"):
        plain = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="transformers"))
        lean = HypicExecutor(model, config=ExecutorConfig(mode=mode, runtime="lean"))
        assert lean.lean is not None and plain.lean is None
        want = plain.first_token_logits(segs, q)
        for _ in range(2):  # cold, then warm (hypic: every entry stored by the cold request)
            got = lean.first_token_logits(segs, q)
            assert got.is_cuda and rel_err(got, want) < 5e-3, mode
    decoded = HypicExecutor(model, config=ExecutorConfig(mode="hypic", runtime="lean")).generate(
        segs, q, max_new_tokens=12, ignore_eos=True)
    assert len(decoded.token_ids) == 12


def test_mamba2_scan_runs_as_fla_simple_gla():
    """Mamba2's SSD scan through fla's simple-GLA kernel (q = C, k = B, v = x dt, g = A dt) equals
    transformers' plain chunk scan, from a zero and a given start, in outputs and final state."""
    pytest.importorskip("fla")
    from hypic_rag.runtime.lean_request import LeanRuntime
    from hypic_rag.runtime.recurrences import Mamba2Recurrence

    lean = LeanRuntime(cuda_model("bamba")).lean
    fast = lean.linear_weights[lean.linear_layers[0]].recurrence
    assert fast.fla is not None
    plain = Mamba2Recurrence(fast.a, fast.skip[:, 0], fast.head_dim, fast.chunk_scan.fn, fast.model_chunk)
    plain.fla = None
    g = torch.Generator(device="cuda").manual_seed(0)
    runs, steps, heads, p, n = 3, 70, fast.a.shape[0], fast.head_dim, lean.state_size
    x = torch.randn(runs, steps, heads, p, device="cuda", generator=g)
    dt = torch.rand(runs, steps, heads, device="cuda", generator=g) * 0.1
    b = torch.randn(runs, steps, lean.groups, n, device="cuda", generator=g)
    c = torch.randn(runs, steps, lean.groups, n, device="cuda", generator=g)
    for start in (None, torch.randn(runs, heads, p, n, device="cuda", generator=g)):
        (out_fast, final_fast), (out_plain, final_plain) = fast.scan(x, dt, b, c, start), plain.scan(x, dt, b, c, start)
        assert rel_err(out_fast, out_plain) < 5e-3 and rel_err(final_fast, final_plain) < 5e-3


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_decode_steps_are_captured_once_and_replayed(family):
    """On CUDA the lean decoder's first step runs eagerly, the second is captured as a CUDA graph,
    and replays give the plain continuation's logits token after token."""
    from hypic_rag.runtime.lean_request import LeanRuntime

    runtime = LeanRuntime(cuda_model(family), (0, 5, 9))
    (prompt,) = random_ids([90], seed=8)
    logits, state = runtime.prefill(prompt)
    decoder = runtime.decoder(state)
    plain = state.copy()
    for _ in range(12):
        token = int(torch.argmax(logits))
        want = runtime.step(plain, token)
        got = decoder.step(token)
        assert rel_err(got, want) < 2e-3
        logits = want
    assert decoder.graph is not None and decoder.eager_steps == 1


def test_the_continuation_mask_is_a_causal_bias_on_cuda_and_booleans_while_ops_are_counted():
    """On CUDA a continuation's attention runs SDPA's causal kernel (a CausalBias); under the op
    counter, which cannot make one, the same mask as booleans, and a counted lean prefill runs."""
    from torch.nn.attention.bias import CausalBias

    from hypic_rag.runtime.contexts import causal_after
    from hypic_rag.runtime.dispatch_count import kernel_ops
    from hypic_rag.runtime.lean_request import LeanRuntime

    cuda = torch.device("cuda")
    assert isinstance(causal_after(5, 3, cuda), CausalBias)
    masks = []
    assert kernel_ops(lambda: masks.append(causal_after(5, 3, cuda))) > 0
    assert masks[0].dtype == torch.bool and masks[0].is_cuda
    runtime = LeanRuntime(cuda_model("qwen3_5"), (0, 5))
    (prompt,) = random_ids([40], seed=9)
    want, _ = runtime.prefill(prompt)
    counted = []
    assert kernel_ops(lambda: counted.append(runtime.prefill(prompt)[0])) > 0
    assert rel_err(counted[0], want) < 1e-4


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_hypic_requests_replay_their_bucket_graph(family):
    """On CUDA a hypic request runs through its shape bucket (runtime/request_graphs.py): the first
    eagerly, the second captures the graph, later ones replay it. Each equals the request run
    eagerly unpadded, keeps its result after the others ran, and its state decodes the same."""
    from hypic_rag.runtime.lean_request import LeanRuntime

    prefix = (0, 5, 9)
    model = cuda_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=prefix)
    runtime = LeanRuntime(model, prefix)
    results = []
    for i in range(4):  # one bucket: 3 segments, questions of 6-9 tokens, under 256 rows
        segs, (q,) = random_ids([60 - 5 * i, 45, 70], seed=20 + i), random_ids([6 + i], seed=30 + i)
        entries = [executor.ensure(s)[0] for s in segs]
        want, want_state = runtime.hypic(entries, q, graphs=False)
        got, state = runtime.hypic(entries, q)
        results.append((got, want))
    (bucket,) = runtime.graphs.buckets.values()
    assert bucket.graph is not None and bucket.runs == 4
    for got, want in results:
        assert got.is_cuda and rel_err(got, want) < 1e-4
    decoder, logits = runtime.decoder(state), results[-1][1]
    for _ in range(6):
        token = int(torch.argmax(logits))
        logits = runtime.step(want_state, token)
        assert rel_err(decoder.step(token), logits) < 2e-3


def test_a_later_request_replays_the_pooled_decode_graph_from_its_first_step():
    """The lean runtime's DecodePool: once a request's Decoder is dropped, the next request of that
    capacity decodes through the same buffers and captured step, with no eager step and no capture."""
    from hypic_rag.runtime.lean_request import LeanRuntime

    runtime = LeanRuntime(cuda_model("qwen3_5"), (0, 5, 9))
    for i, length in enumerate((90, 70)):  # both under 256 rows: one capacity
        (prompt,) = random_ids([length], seed=40 + i)
        logits, state = runtime.prefill(prompt)
        decoder, plain = runtime.decoder(state), state.copy()
        for _ in range(8):
            token = int(torch.argmax(logits))
            want = runtime.step(plain, token)
            assert rel_err(decoder.step(token), want) < 2e-3
            logits = want
        assert decoder.graph is not None and decoder.eager_steps == (1 if i == 0 else 0)
        del decoder


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_compiled_buckets_and_decode_steps_are_captured_and_replay_the_eager_results(family):
    """compile_graphs on CUDA: inductor compiles a bucket's forward and the decode step (fla's kernels
    as opaque ops inside), the graphs capture the compiled code, and replays give the eager logits,
    to TF32's precision: compiled, every fp32 product of these fp32 models may use TF32
    (runtime/compiled.py), where eagerly only the chain's do."""
    from hypic_rag.runtime.lean_request import LeanRuntime

    prefix = (0, 5, 9)
    model = cuda_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=prefix)
    runtime = LeanRuntime(model, prefix, compile_graphs=True)
    for i in range(3):  # one bucket: compiled and warmed up, captured, replayed
        segs, (q,) = random_ids([60 - 5 * i, 45, 70], seed=50 + i), random_ids([6 + i], seed=60 + i)
        entries = [executor.ensure(s)[0] for s in segs]
        want, want_state = runtime.hypic(entries, q, graphs=False)
        got, state = runtime.hypic(entries, q)
        assert rel_err(got, want) < 5e-3
    (bucket,) = runtime.graphs.buckets.values()
    assert bucket.forward.failed is False and bucket.graph is not None
    decoder, logits = runtime.decoder(state), want
    for _ in range(6):
        token = int(torch.argmax(logits))
        logits = runtime.step(want_state, token)
        assert rel_err(decoder.step(token), logits) < 5e-3
    assert decoder.forward.failed is False and decoder.graph is not None


def test_compiled_recurrence_ops_state_fla_outputs_as_fla_returns_them():
    """torch.library.opcheck of the ops compiled graphs call fla's kernels through (runtime/kernel_ops.py)."""
    pytest.importorskip("fla")
    from hypic_rag.runtime import kernel_ops
    from hypic_rag.runtime.lean_request import LeanRuntime

    qwen = LeanRuntime(cuda_model("qwen3_5")).lean
    gated = qwen.linear_weights[qwen.linear_layers[0]].recurrence
    bamba = LeanRuntime(cuda_model("bamba")).lean
    mamba = bamba.linear_weights[bamba.linear_layers[0]].recurrence
    assert mamba.fla is not None
    g = torch.Generator(device="cuda").manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, device="cuda", generator=g)  # noqa: E731
    for kernel, steps in ((gated.chunk_fn, 70), (gated.step_fn, 1)):
        q, k, v = randn(2, steps, 2, 32), randn(2, steps, 2, 32), randn(2, steps, 2, 32)
        decay = -torch.rand(2, steps, 2, device="cuda", generator=g)
        beta = torch.rand(2, steps, 2, device="cuda", generator=g)
        for start in (None, randn(2, 2, 32, 32)):
            torch.library.opcheck(kernel_ops.gated_delta_rule_op, (kernel.key, q, k, v, decay, beta, start))
    q, k, v = randn(2, 70, 4, 16), randn(2, 70, 4, 16), randn(2, 70, 4, 32)
    torch.library.opcheck(kernel_ops.simple_gla_op, (mamba.fla.key, q, k, v, -torch.rand(2, 70, 4, device="cuda",
                                                                                            generator=g) * 0.1, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hypic_adaptive_on_cuda_moves_the_first_token_toward_full_recompute(dtype):
    """The adaptive rung on CUDA (its attention probe wraps the CUDA model's attention function, its
    span pass runs fla's kernels), on the shipped model: as on the CPU
    (tests/test_adaptive_recompute.py), its first-token KL to full recompute over eight-document
    questions is under half of hypic w=8's in fp32; in bf16, where rounding adds a KL floor both
    rungs share, under hypic's."""
    from hypic_rag.api import SHIPPED_MODEL, load_model
    from test_adaptive_recompute import first_token_kls

    model, tok = load_model(SHIPPED_MODEL, dtype=dtype, device="cuda")
    kl = first_token_kls(model, tok, "cuda")
    print(f"first-token KL to full recompute, {dtype}: {kl}")
    assert kl["hypic_adaptive"] < (0.5 if dtype == torch.float32 else 1.0) * kl["hypic"], kl
