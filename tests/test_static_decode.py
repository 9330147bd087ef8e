"""Decode steps over static buffers (runtime/static_decode.py): the same logits as the plain
continuation token by token, past a buffer's capacity, and replay-safe (one compiled graph serves
every step: no per-step Python value), for both recurrence families."""

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.runtime import static_decode
from hypic_rag.runtime.lean_request import LeanRuntime
from hypic_rag.runtime.static_decode import DecodeBuffers

PREFIX = (0, 5, 9)
FAMILIES = ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid"]


def _hypic_state(family):
    """A hypic request's state (seams listed after the cached rows) and its first-token logits."""
    model = get_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    runtime = LeanRuntime(model, PREFIX)
    *segs, q = random_ids([30, 25, 40, 6], seed=11)
    logits, state = runtime.hypic([executor.ensure(s)[0] for s in segs], q)
    return runtime, state, logits


def _plain_tokens(runtime, state, logits, steps):
    """Greedy tokens and logits by the plain continuation (ContinueFrom: K/V grown by concatenation)."""
    state, out = state.copy(), []
    for _ in range(steps):
        token = int(torch.argmax(logits))
        logits = runtime.step(state, token)
        out.append((token, logits))
    return out, state


@pytest.mark.parametrize("family", FAMILIES)
def test_static_steps_match_the_plain_continuation_and_leave_the_state_alone(family):
    runtime, state, logits = _hypic_state(family)
    want, _ = _plain_tokens(runtime, state, logits, 20)
    length, keys = state.length, state.keys[0].clone()
    decoder = runtime.decoder(state)
    assert decoder.capture is False  # CPU: eager steps over the same buffers
    for token, expected in want:
        got = decoder.step(token)
        assert float((got - expected).abs().max()) < 1e-4
    assert state.length == length and torch.equal(state.keys[0], keys)


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_a_decoder_past_its_capacity_moves_to_a_larger_buffer(family, monkeypatch):
    monkeypatch.setattr(static_decode, "MIN_CAPACITY", 8)
    runtime, state, logits = _hypic_state(family)  # about 75 rows: capacity 128, full after ~53 steps
    steps = static_decode.capacity_for(state.length + 1) - state.length + 5
    want, extended = _plain_tokens(runtime, state, logits, steps)
    decoder = runtime.decoder(state)
    first = decoder.buffers.capacity
    for token, expected in want:
        assert float((decoder.step(token) - expected).abs().max()) < 1e-4
    assert decoder.buffers.capacity == 2 * first
    after = decoder.buffers.state()
    assert torch.equal(after.positions, extended.positions)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(after.keys, extended.keys))


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_one_compiled_step_serves_every_step_without_recompiling(family):
    """What a CUDA graph replays is what step() did when captured: dynamo with fullgraph=True and
    recompiles forbidden accepts the step once and then runs it for every token, so no step reads a
    Python value that changes (a row count, a length) and no host synchronisation hides inside."""
    runtime, state, logits = _hypic_state(family)
    want, _ = _plain_tokens(runtime, state, logits, 6)
    buffers = DecodeBuffers(runtime.lean, state, 256)
    torch._dynamo.reset()
    compiled = torch.compile(buffers.step, fullgraph=True, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
        for token, expected in want:
            buffers.token.fill_(token)
            assert float((compiled() - expected).abs().max()) < 1e-4
    assert int(buffers.row) == state.length + len(want)


def test_the_executor_decodes_the_same_tokens_through_the_static_buffers():
    model = get_model("qwen3_5")
    *segs, q = random_ids([30, 25, 40, 6], seed=12)
    lean = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="lean"), shared_prefix=PREFIX)
    plain = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    a = lean.generate(segs, q, max_new_tokens=24, ignore_eos=True)
    b = plain.generate(segs, q, max_new_tokens=24, ignore_eos=True)
    assert a.token_ids == b.token_ids and len(a.token_ids) == 24


def test_capacity_is_a_power_of_two_above_the_rows():
    assert static_decode.capacity_for(0) == 256 and static_decode.capacity_for(255) == 256
    assert static_decode.capacity_for(256) == 512 and static_decode.capacity_for(1000) == 1024
    with pytest.raises(ValueError, match="capacity"):
        runtime, state, _ = _hypic_state("qwen3_5")
        DecodeBuffers(runtime.lean, state, state.length)



def test_pooled_buffers_serve_the_next_request_with_its_own_state():
    """A dropped Decoder's buffers go back to the pool; the next request of that capacity loads its
    state into them (rows an earlier request left stay hidden) and decodes as the plain continuation."""
    runtime, state, logits = _hypic_state("qwen3_5")
    pool = static_decode.DecodePool()
    long_prompt = random_ids([90], seed=13)[0]  # a longer state first: its rows outlast the second's
    first_logits, first_state = runtime.prefill(long_prompt)
    first = static_decode.Decoder(runtime.lean, first_state, capture=False, pool=pool)
    for token, _ in _plain_tokens(runtime, first_state, first_logits, 5)[0]:
        first.step(token)
    buffers = first.buffers
    assert pool.take(buffers.capacity) is None  # still held by the first request
    del first
    second = static_decode.Decoder(runtime.lean, state, capture=False, pool=pool)
    want, _ = _plain_tokens(runtime, state, logits, 8)
    for token, expected in want:
        assert float((second.step(token) - expected).abs().max()) < 1e-4
    assert second.buffers is buffers  # the same buffers, reloaded
    del second
    assert pool.take(buffers.capacity)[0] is buffers and pool.take(buffers.capacity) is None


def test_the_pool_keeps_a_few_buffers_per_capacity():
    pool = static_decode.DecodePool(per_capacity=2)
    for i in range(3):
        pool.give(256, (i, None, None))
    assert pool.take(256) == (1, None, None) and pool.take(256) == (0, None, None) and pool.take(256) is None
    assert pool.take(512) is None
