"""Cache-miss prefill on a real local Ray cluster (two actors, each loading the shipped checkpoint)."""

import pytest

ray = pytest.importorskip("ray")

from conftest import demo_docs, shipped_model  # noqa: E402
from hypic_rag import ExecutorConfig, HypicExecutor  # noqa: E402
from hypic_rag.api import SHIPPED_MODEL  # noqa: E402
from hypic_rag.distributed.ray_prefill import RayConfig, RayPrefill  # noqa: E402
from test_miss_prefill import max_entry_diff  # noqa: E402


@pytest.fixture(scope="module")
def executor_and_prefill():
    model, tokenizer = shipped_model()
    ex = HypicExecutor(model, tokenizer, ExecutorConfig(seam_tokens=8, max_new_tokens=4),
                       shared_prefix=[tokenizer.bos_token_id])
    prefill = RayPrefill.for_executor(ex, SHIPPED_MODEL, RayConfig(workers=2, cpus_per_worker=0.5))
    yield ex, prefill
    prefill.close()


def segments_of(tokenizer, n):
    return [tuple(tokenizer.encode(f"Document: {d['title']}\n{d['text']}\n", add_special_tokens=False))
            for d in demo_docs(n)]


def test_ray_entries_equal_local_entries(executor_and_prefill):
    ex, prefill = executor_and_prefill
    segs = segments_of(ex.tokenizer, 5)
    remote = prefill(segs)
    assert [e.token_ids for e in remote] == segs
    for seg, entry in zip(segs, remote):
        ex.check_entry(entry)
        assert max_entry_diff(ex.precompute(seg), entry) < 1e-5


def test_shares_spread_work_over_both_actors(executor_and_prefill):
    _, prefill = executor_and_prefill
    segs = [(1,) * 50, (1,) * 50, (1,) * 40, (1,) * 30, (1,) * 30]
    shares = prefill.shares(segs, max_batch=8)
    assert sorted(i for s in shares for i in s) == list(range(5)) and all(shares)
    same = prefill.shares([(1,) * 50] * 8, max_batch=8)  # one length: still split over both actors
    assert sorted(len(s) for s in same) == [4, 4]


def test_query_time_misses_on_ray_answer_like_local(executor_and_prefill):
    ex, prefill = executor_and_prefill
    local = HypicExecutor(ex.model, ex.tokenizer, ex.config, ex.shared_prefix)
    remote = HypicExecutor(ex.model, ex.tokenizer, ex.config, ex.shared_prefix, miss_prefill=prefill)
    segs = segments_of(ex.tokenizer, 4)
    q = ex.tokenizer.encode("Question: Where was the first person born?\nAnswer:", add_special_tokens=False)
    a, b = local.generate(segs, q), remote.generate(segs, q)
    assert b.segment_misses == 4 and len(remote.store) == 4
    assert (a.first_token_logits - b.first_token_logits).abs().max() < 1e-4
    assert a.token_ids == b.token_ids


def test_workers_with_another_setting_are_refused(executor_and_prefill):
    ex, _ = executor_and_prefill
    other = HypicExecutor(ex.model, ex.tokenizer, ExecutorConfig(seam_tokens=4), ex.shared_prefix)
    with pytest.raises(ValueError, match="same checkpoint"):
        RayPrefill(SHIPPED_MODEL, ex.config, ex.shared_prefix, RayConfig(workers=1, cpus_per_worker=0.5),
                   expected_fingerprint=other.fingerprint.to_string())


def test_workers_the_cluster_has_no_room_for_fail_with_a_clear_error(executor_and_prefill):
    ex, _ = executor_and_prefill
    with pytest.raises(ValueError, match="did not start"):
        RayPrefill(SHIPPED_MODEL, ex.config, ex.shared_prefix,
                   RayConfig(workers=1, cpus_per_worker=64, startup_timeout_s=3))


def test_ray_config_is_validated():
    with pytest.raises(ValueError, match="workers"):
        RayConfig(workers=0)
    with pytest.raises(ValueError, match="threads_per_worker"):
        RayConfig(threads_per_worker=0)


def test_hypic_rag_use_ray_ingests_and_answers(tmp_path, executor_and_prefill):
    from hypic_rag.api import HypicRAG

    rag = HypicRAG.create(tmp_path / "store", model=SHIPPED_MODEL)
    prefill = rag.use_ray(RayConfig(workers=1, cpus_per_worker=0.5))
    assert rag.ingest(demo_docs(3)).entries_computed == 3
    result = rag.query("Where was the first person born?", k=3, max_new_tokens=3)
    assert result.timings.ttft > 0 and len(result.segment_ids) == 3
    assert rag.executor_for("hypic").miss_prefill is prefill  # same entries: same workers
    assert rag.executor_for(mode="pic_transition_rope").miss_prefill is not prefill  # seam 0 entries: local
    rag.close()
    assert prefill.actors == []
