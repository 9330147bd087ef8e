"""What the CUDA graphs capture, compiled by inductor first (runtime/compiled.py, kernel_ops.py): on
the CPU the same compile (C++ kernels where CUDA gets Triton ones) must give the eager logits and
states, take the whole function as one graph with the recurrences as opaque ops, and call far fewer
kernels than the eager function dispatches ops (the count a replayed graph pays per kernel)."""

import shutil

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.runtime import kernel_ops
from hypic_rag.runtime.dispatch_count import compiled_launches, kernel_ops as eager_ops
from hypic_rag.runtime.lean_request import LeanRuntime
from hypic_rag.runtime.request_graphs import RequestGraphs
from hypic_rag.runtime.request_inputs import Parts, RequestInputs
from hypic_rag.runtime.seam_chain import plan_request, run_planned
from hypic_rag.runtime.static_decode import DecodeBuffers

PREFIX = (0, 5, 9)
FAMILIES = ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid_dense"]
# inductor's CPU kernels are C++ it compiles (the machines this project runs on have g++)
inductor = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                              reason="inductor's CPU backend needs a C++ compiler")


def _setup(family, compile_graphs=False):
    model = get_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    return LeanRuntime(model, PREFIX, compile_graphs=compile_graphs), executor


def _entries(runtime, executor, segments, seed):
    segs = random_ids([24] * segments, seed=seed)
    return runtime.anchored([executor.ensure(s)[0] for s in segs]), random_ids([6], seed=seed + 1)[0]


@pytest.mark.parametrize("family", FAMILIES)
@inductor
def test_a_compiled_request_is_the_eager_one_in_a_fifth_of_the_kernels(family):
    runtime, executor = _setup(family)
    entries, q = _entries(runtime, executor, 4, seed=2)
    inputs = RequestInputs.gather(Parts.of(runtime.lean, entries))
    # padded as a bucket pads it: the shapes a graph captures
    plan = plan_request(entries, q, len(PREFIX), runtime.lean.conv_width, torch.device("cpu"), run_width=16, tokens=64,
                        kept=120)
    with torch.no_grad():
        eager = eager_ops(lambda: run_planned(runtime.lean, plan, inputs, runtime.prefix_state))
        want, want_state = run_planned(runtime.lean, plan, inputs, runtime.prefix_state)
        torch._dynamo.reset()
        launches, (got, state) = compiled_launches(run_planned, runtime.lean, plan, inputs, runtime.prefix_state)
    assert float((got - want).abs().max()) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(state.keys, want_state.keys))
    assert all(torch.allclose(state.recurrent[i], want_state.recurrent[i], atol=1e-5) for i in state.recurrent)
    assert all(torch.allclose(state.conv[i], want_state.conv[i], atol=1e-5) for i in state.conv)
    assert launches <= eager / 4, (launches, eager)  # measured: 103 / 512, 149 / 635, 66 / 396, 60 / 360, 61 / 342


@pytest.mark.parametrize("family", FAMILIES)
@inductor
def test_a_compiled_decode_step_is_the_eager_one_in_two_fifths_of_the_kernels(family):
    runtime, executor = _setup(family)
    entries, q = _entries(runtime, executor, 3, seed=4)
    _, state = runtime.hypic(entries[1:], q, graphs=False)
    counted, reference, buffers = (DecodeBuffers(runtime.lean, state, 256) for _ in range(3))
    with torch.no_grad():
        eager = eager_ops(counted.step)
        want = reference.step()
        torch._dynamo.reset()
        launches, got = compiled_launches(DecodeBuffers.step, buffers)
    assert float((got - want).abs().max()) < 1e-5
    assert int(buffers.row) == state.length + 1
    assert launches <= 0.4 * eager, (launches, eager)  # measured: 71 / 277, 114 / 405, 43 / 178, 38 / 154, 38 / 143


@inductor
def test_compiled_buckets_and_decode_steps_serve_requests_without_recompiling():
    runtime, executor = _setup("qwen3_5", compile_graphs=True)
    graphs = RequestGraphs(runtime, capture=False)
    torch._dynamo.reset()
    for seed in (6, 8):  # two requests of one bucket: the second reuses the first's compiled graph
        entries, q = _entries(runtime, executor, 3, seed=seed)
        want, want_state = runtime.hypic(entries[1:], q, graphs=False)
        with torch._dynamo.config.patch(error_on_recompile=seed == 8):
            got, state = graphs.run(entries, q)
        assert float((got - want).abs().max()) < 1e-5 and state.length == want_state.length
    (bucket,) = graphs.buckets.values()
    assert bucket.forward.failed is False and bucket.runs == 2
    decoder, plain = runtime.decoder(state), state.copy()
    assert decoder.capture is False  # CPU: the compiled step runs eagerly, no graph
    logits = got
    for step in range(8):
        token = int(torch.argmax(logits))
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            logits = decoder.step(token)
        if step == 0:
            decoder_first = logits
        assert float((logits - runtime.step(plain, token)).abs().max()) < 1e-4
    assert decoder.forward.failed is False
    again = runtime.decoder(state)  # new buffers of the same capacity: the same compiled step serves them
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert float((again.step(int(torch.argmax(got))) - decoder_first).abs().max()) < 1e-5


@inductor
def test_the_executor_decodes_compiled_the_tokens_of_the_transformers_path(caplog):
    model = get_model("qwen3_5")
    *segs, q = random_ids([30, 25, 40, 6], seed=12)
    compiled = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="lean", compile_graphs=True),
                             shared_prefix=PREFIX)
    plain = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    assert compiled.lean.compile_graphs is True
    torch._dynamo.reset()
    a = compiled.generate(segs, q, max_new_tokens=12, ignore_eos=True)
    b = plain.generate(segs, q, max_new_tokens=12, ignore_eos=True)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 12
    assert not [r for r in caplog.records if "not compiled" in r.getMessage()]  # it did run compiled


def test_compile_graphs_must_be_a_bool():
    with pytest.raises(RequestError, match="compile_graphs"):
        ExecutorConfig(compile_graphs="yes")


def test_the_recurrence_ops_state_their_outputs_as_the_kernels_return_them():
    """torch.library.opcheck: schema, fake (meta) outputs against the real ones, and the op under
    dynamo and AOT, for the gated delta rule's chunk and step functions and Mamba2's chunk scan
    (transformers' plain-torch ones; fla's on CUDA are checked in tests/test_gpu.py)."""
    qwen, bamba = _setup("qwen3_5")[0].lean, _setup("bamba")[0].lean
    recurrence = qwen.linear_weights[qwen.linear_layers[0]].recurrence
    g = torch.Generator().manual_seed(0)
    heads, d_k, d_v = 2, 8, 8
    for kernel, steps in ((recurrence.chunk_fn, 11), (recurrence.step_fn, 1)):
        q, k = (torch.randn(2, steps, heads, d_k, generator=g) for _ in range(2))
        v = torch.randn(2, steps, heads, d_v, generator=g)
        decay, beta = -torch.rand(2, steps, heads, generator=g), torch.rand(2, steps, heads, generator=g)
        for start in (None, torch.randn(2, heads, d_k, d_v, generator=g)):
            torch.library.opcheck(kernel_ops.gated_delta_rule_op, (kernel.key, q, k, v, decay, beta, start))
    mamba = bamba.linear_weights[bamba.linear_layers[0]].recurrence
    heads, p, n = mamba.a.shape[0], mamba.head_dim, bamba.state_size
    x = torch.randn(2, 20, heads, p, generator=g)
    dt = torch.rand(2, 20, heads, generator=g) * 0.1
    b, c = (torch.randn(2, 20, bamba.groups, n, generator=g) for _ in range(2))
    torch.library.opcheck(kernel_ops.mamba2_chunk_scan_op,
                          (mamba.chunk_scan.key, x, dt, mamba.a, b, c, 16, mamba.skip[:, 0], None))


def test_the_tf32_scope_is_left_to_the_caller_while_compiling():
    """scan.tensor_core_fp32 sets a process-wide flag dynamo cannot trace: inside a compiled function
    it must do nothing, on CUDA too (runtime/compiled.py scopes the whole call), or every compile on
    a GPU would fail over to eager. Checked with the CUDA branch on CPU tensors."""
    from hypic_rag.runtime.scan import tensor_core_fp32

    def product(a, b):
        with tensor_core_fp32(torch.device("cuda")):
            return a @ b

    a, b = torch.randn(4, 4), torch.randn(4, 4)
    torch._dynamo.reset()
    assert torch.equal(torch.compile(product, fullgraph=True, backend="eager")(a, b), a @ b)
