"""Hypic requests in shape buckets (runtime/request_graphs.py), run here without capture: the padded
request over a bucket's buffers gives the unpadded request's logits and a state that decodes the
same; requests sharing a bucket never see each other's inputs or results; buckets are kept
least-recently-used. tests/test_gpu.py replays the same buckets as CUDA graphs."""

import threading

import pytest
import torch
from conftest import get_model, random_ids

from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.runtime.lean_request import LeanRuntime
from hypic_rag.runtime.request_graphs import RequestGraphs, question_bucket, rows_bucket

PREFIX = (0, 5, 9)
FAMILIES = ["qwen3_5", "qwen3_next", "falcon_h1_mup", "bamba", "granitemoehybrid_dense"]


def _setup(family):
    model = get_model(family)
    executor = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8, runtime="transformers"), shared_prefix=PREFIX)
    return LeanRuntime(model, PREFIX), executor


def _request(executor, lengths, question, seed):
    segs = random_ids(lengths, seed=seed)
    return [executor.ensure(s)[0] for s in segs], random_ids([question], seed=seed + 1)[0]


def _decoded(runtime, logits, state, steps=4):
    out = [logits]
    for _ in range(steps):
        logits = runtime.step(state, int(torch.argmax(logits)))
        out.append(logits)
    return torch.stack(out)


def test_bucket_sizes():
    assert [question_bucket(n) for n in (1, 16, 17, 24, 33)] == [16, 16, 32, 32, 64]
    assert [rows_bucket(n) for n in (1, 256, 257, 4096, 4097, 5121, 16384)] == [256, 256, 320, 4096, 5120, 6144, 16384]
    for n in range(257, 20000, 97):  # never less, never more than a quarter more
        assert n <= rows_bucket(n) <= 1.25 * n


@pytest.mark.parametrize("family", FAMILIES)
def test_a_bucketed_request_equals_the_request_unpadded(family):
    runtime, executor = _setup(family)
    graphs = RequestGraphs(runtime, capture=False)
    entries, q = _request(executor, [40, 31, 57], 6, seed=1)
    want, want_state = runtime.hypic(entries, q, graphs=False)
    got, state = graphs.run(runtime.anchored(entries), q)
    (bucket,) = graphs.buckets
    assert bucket.question == 16 and bucket.rows == 256 and bucket.tokens > len(q) + 3 * 8  # it was padded
    assert float((got - want).abs().max()) < 1e-5
    assert state.length == want_state.length and torch.equal(state.positions, want_state.positions)
    assert float((_decoded(runtime, got, state) - _decoded(runtime, want, want_state)).abs().max()) < 1e-4


def test_requests_sharing_a_bucket_see_only_their_own_inputs_and_keep_their_results():
    runtime, executor = _setup("qwen3_5")
    graphs = RequestGraphs(runtime, capture=False)
    first, q1 = _request(executor, [60, 50, 70], 9, seed=3)  # more rows than the second: stale rows stay behind
    second, q2 = _request(executor, [30, 20, 44], 3, seed=5)
    logits1, state1 = graphs.run(runtime.anchored(first), q1)
    logits2, state2 = graphs.run(runtime.anchored(second), q2)
    assert len(graphs.buckets) == 1 and next(iter(graphs.buckets.values())).runs == 2
    for entries, q, logits, state in ((first, q1, logits1, state1), (second, q2, logits2, state2)):
        want, want_state = runtime.hypic(entries, q, graphs=False)
        assert float((logits - want).abs().max()) < 1e-5  # the first's results survive the second's run
        assert float((_decoded(runtime, logits, state) - _decoded(runtime, want, want_state)).abs().max()) < 1e-4


def test_buckets_are_kept_least_recently_used():
    runtime, executor = _setup("qwen3_5")
    graphs = RequestGraphs(runtime, capture=False, max_buckets=2)
    requests = [_request(executor, [30] * n, 4, seed=n) for n in (1, 2, 3)]  # one bucket per segment count
    for entries, q in requests[:2] + requests[:1] + requests[2:]:
        graphs.run(runtime.anchored(entries), q)
    assert [b.seams for b in graphs.buckets] == [1, 3]  # 2 was the least recently used
    with pytest.raises(ValueError):
        RequestGraphs(runtime, max_buckets=0)
    one = graphs.buckets[next(iter(graphs.buckets))].inputs.nbytes()
    small = RequestGraphs(runtime, capture=False, max_bytes=one + 1)  # room for about one bucket's buffers
    for entries, q in requests:
        small.run(runtime.anchored(entries), q)
        assert len(small.buckets) == 1 and small.nbytes() >= one  # the newest stays, even when over


def test_concurrent_requests_get_their_own_results():
    runtime, executor = _setup("qwen3_5")
    graphs = RequestGraphs(runtime, capture=False)
    requests = [_request(executor, [30 + 3 * i, 28, 40], 5, seed=10 + i) for i in range(4)]  # one bucket
    wants = [runtime.hypic(entries, q, graphs=False)[0] for entries, q in requests]
    results, errors = [None] * len(requests), []

    def serve(i):
        try:
            for _ in range(3):
                results[i] = graphs.run(runtime.anchored(requests[i][0]), requests[i][1])[0]
                assert float((results[i] - wants[i]).abs().max()) < 1e-5
        except Exception as error:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(error)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(graphs.buckets) == 1


def test_the_executor_passes_its_cuda_graphs_setting_and_checks_it():
    with pytest.raises(RequestError, match="cuda_graphs"):
        ExecutorConfig(cuda_graphs="yes")
    runtime, _ = _setup("qwen3_5")
    assert runtime.graphs is None  # no CUDA device: every request runs eagerly
