"""Entries with E and M in bfloat16 (ExecutorConfig.interior_dtype): smaller, recorded in the
fingerprint and the store, composed in fp32 on both runtimes."""

import pytest
import torch

from conftest import demo_docs, get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.errors import RequestError
from hypic_rag.models.fingerprint import ModelFingerprint


def executors(family="qwen3_5", runtime="transformers"):
    model = get_model(family)
    return (HypicExecutor(model, config=ExecutorConfig(runtime=runtime)),
            HypicExecutor(model, config=ExecutorConfig(interior_dtype="bfloat16", runtime=runtime)))


@pytest.mark.parametrize("family", ["qwen3_5", "bamba", "minimax"])
def test_bf16_interiors_are_smaller_and_answer_as_fp32_ones(family):
    full, half = executors(family)
    *segs, q = random_ids([40, 33, 45, 6], seed=21)
    a, b = full.precompute(segs[1]), half.precompute(segs[1])
    for x, y in zip(a.linear, b.linear):
        assert y.interior_state.dtype == y.interior_operator.dtype == torch.bfloat16
        assert y.end_state is None and x.end_state is None  # segment 0 composes from the prefix too
        assert torch.allclose(y.interior_state.float(), x.interior_state, rtol=1e-2, atol=1e-3)
    assert b.nbytes < a.nbytes
    reference = full.first_token_logits(segs, q)
    assert (half.first_token_logits(segs, q) - reference).abs().max() < 2e-2 * max(1.0, reference.abs().max().item())
    assert half.key_of(segs[0]) != full.key_of(segs[0])  # different entries, different keys


def test_the_lean_runtime_composes_bf16_interiors_as_the_transformers_path_does():
    _, plain = executors("qwen3_5")
    lean = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(interior_dtype="bfloat16", runtime="lean"),
                         store=plain.store)
    *segs, q = random_ids([30, 30, 30, 5], seed=22)
    expected = plain.first_token_logits(segs, q)
    assert (lean.first_token_logits(segs, q) - expected).abs().max() < 1e-4


def test_the_fingerprint_and_the_store_record_it(tmp_path):
    from hypic_rag.api import HypicRAG
    from hypic_rag.store.manifest import Manifest

    _, half = executors()
    text = half.fingerprint.to_string()
    assert text.endswith(":ibfloat16") and ModelFingerprint.from_string(text) == half.fingerprint
    plain = executors()[0].fingerprint.to_string()
    assert ModelFingerprint.from_string(plain).interior_dtype == "float32" and len(plain.split(":")) == 6
    with pytest.raises(RequestError, match="interior_dtype"):
        ExecutorConfig(interior_dtype="float16")
    with HypicRAG.create(tmp_path / "s", config=ExecutorConfig(interior_dtype="bfloat16")) as rag:
        rag.ingest(demo_docs(2))
    assert Manifest.read(tmp_path / "s").interior_dtype == "bfloat16"
    with HypicRAG.from_store(tmp_path / "s") as rag:  # reopened with the store's setting, entries reused
        assert rag.executor.config.interior_dtype == "bfloat16"
        result = rag.query(f"What is the home city of {demo_docs(2)[0]['title']}?", k=2)
        assert result.generation.segment_hits == 2 and result.generation.segment_misses == 0
