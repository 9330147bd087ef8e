"""Swaps of a modeling module's functions are process-wide: executors of several models of one
architecture, in several threads, must neither see nor undo each other's swaps."""

import threading

from conftest import random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.models.tiny import tiny_model


def test_concurrent_requests_on_models_of_one_architecture_match_sequential_runs():
    models = [tiny_model("qwen3_5", seed=s) for s in (0, 1, 2)]
    executors = [HypicExecutor(models[0]), HypicExecutor(models[1]),  # seam pass and precompute swap functions
                 HypicExecutor(models[2], config=ExecutorConfig(mode="full_recompute"))]  # a plain forward
    requests = [random_ids([24, 24, 24, 24], seed=40 + i) for i in range(6)]
    question = [7, 8, 9]
    expected = [[ex.first_token_logits(segs, question) for segs in requests] for ex in executors]
    for ex in executors[:2]:
        ex.store = type(ex.store)(capacity_bytes=2**62)  # empty again: the threads precompute as well as compose
    results: dict[int, list] = {i: [] for i in range(3)}
    errors = []
    start = threading.Barrier(3)

    def run(i):
        try:
            start.wait()
            for _ in range(3):
                results[i].append([executors[i].first_token_logits(segs, question) for segs in requests])
                if i < 2:
                    executors[i].store = type(executors[i].store)(capacity_bytes=2**62)
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    for i in range(3):
        for run_logits in results[i]:
            for got, want in zip(run_logits, expected[i]):
                assert (got - want).abs().max() < 1e-5
