"""Bad input gets a clear ValueError."""

import dataclasses

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.models.fingerprint import ModelFingerprint
from hypic_rag.models.tiny import tiny_model


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown mode"):
        ExecutorConfig(mode="fast")
    with pytest.raises(ValueError, match="seam_tokens"):
        ExecutorConfig(seam_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        ExecutorConfig(temperature=-0.1)
    with pytest.raises(ValueError, match="top_p"):
        ExecutorConfig(top_p=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ExecutorConfig().mode = "hypic"


def test_empty_segment_and_empty_question():
    ex = HypicExecutor(get_model("qwen3_5"))
    with pytest.raises(ValueError, match="segment 1 is empty"):
        ex.generate([[5, 6], []], [7])
    with pytest.raises(ValueError, match="question is empty"):
        ex.generate([[5, 6]], [])


def test_out_of_vocab_and_text_instead_of_ids():
    ex = HypicExecutor(get_model("qwen3_5"))
    with pytest.raises(ValueError, match=r"not a token id in \[0, 128\)"):
        ex.generate([[5, 500]], [7])
    with pytest.raises(ValueError, match="tokenize it first"):
        ex.generate(["some text"], [7])


def test_segment_longer_than_model_positions():
    ex = HypicExecutor(get_model("qwen3_5"))
    with pytest.raises(ValueError, match="more than the model's 4096 positions"):
        ex.precompute([5] * 4097)
    with pytest.raises(ValueError, match="retrieve fewer segments"):
        ex.generate([[5] * 2000, [6] * 2000], [7] * 50, max_new_tokens=64)


def test_entry_from_another_model_or_setting_is_refused():
    a = HypicExecutor(get_model("qwen3_5"))
    other_weights = HypicExecutor(tiny_model("qwen3_5", seed=1))
    other_seam = HypicExecutor(get_model("qwen3_5"), config=ExecutorConfig(seam_tokens=4))
    assert a.fingerprint != other_weights.fingerprint and a.fingerprint != other_seam.fingerprint
    (seg,) = random_ids([12])
    entry = a.precompute(seg)
    with pytest.raises(ValueError, match="rebuild the store"):
        other_weights.check_entry(entry)
    other_seam.store.put(other_seam.key_of(seg), entry)  # a foreign entry under this executor's key
    result = other_seam.generate([seg], [5], max_new_tokens=2)  # dropped and recomputed, not served
    assert other_seam.dropped_entries == 1 and result.segment_misses == 1
    assert other_seam.store.get(other_seam.key_of(seg)).fingerprint == other_seam.fingerprint.to_string()
    assert other_seam.generate([seg], [5], max_new_tokens=2).segment_hits == 1


def test_entry_with_wrong_dtype_is_refused():
    ex = HypicExecutor(get_model("qwen3_5"))
    entry = ex.precompute(random_ids([12])[0])
    half = dataclasses.replace(
        entry, attention=tuple(dataclasses.replace(a, keys=a.keys.half(), values=a.values.half()) for a in entry.attention)
    )
    with pytest.raises(ValueError, match="torch.float16"):
        ex.check_entry(half)


def test_fingerprint_round_trips_and_rejects_garbage():
    fp = HypicExecutor(get_model("bamba")).fingerprint
    assert ModelFingerprint.from_string(fp.to_string()) == fp
    with pytest.raises(ValueError, match="not a hypic_rag model fingerprint"):
        ModelFingerprint.from_string("bamba:abc")


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import LlamaConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(ValueError, match="not supported.*supported: .*qwen3_5_text"):
        HypicExecutor(model)


def test_pic_modes_refuse_entries_built_with_a_seam():
    model = get_model("qwen3_5")
    seam_entry = HypicExecutor(model, config=ExecutorConfig(seam_tokens=8)).precompute(random_ids([20])[0])
    from hypic_rag.executor.compose import compose_segments
    from hypic_rag.executor import cache_ops
    from hypic_rag.config import Mode

    ex = HypicExecutor(model, config=ExecutorConfig(mode="pic_transition"))
    with pytest.raises(ValueError, match="seam_tokens=0"):
        compose_segments(model, ex.spec, ex.rotary_emb, cache_ops.new_cache(model), [seam_entry, seam_entry],
                         Mode.PIC_TRANSITION, 0)


def test_weights_digest_is_remembered_until_the_weights_change():
    from hypic_rag.models.tiny import tiny_model

    model = tiny_model("qwen3_5", seed=3)
    first = ModelFingerprint.of(model, 8, ()).weights_digest
    assert ModelFingerprint.of(model, 4, (1,)).weights_digest == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an in-place update bumps the tensor's version
    assert ModelFingerprint.of(model, 8, ()).weights_digest != first
