"""Operator extraction and composition against their references and against the model's own recurrence."""

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag import ExecutorConfig, HypicExecutor
from hypic_rag.executor import cache_ops
from hypic_rag.models.registry import model_spec
from hypic_rag.models.specs import MixerFamily
from hypic_rag.models.families import gated_delta, mamba2
from hypic_rag.ops.capture import capture_recurrences
from hypic_rag.ops.compose import compose_state, compose_state_ref, merge_conv_tail
import sys


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def captured_calls(model, ids, device="cpu"):
    spec = model_spec(model)
    ex = HypicExecutor(model)
    cache = cache_ops.new_cache(model)
    with capture_recurrences(model, spec.linear, ex.mixers) as calls:
        model.model(input_ids=torch.tensor([ids], device=device), past_key_values=cache,
                    position_ids=torch.arange(len(ids), device=device)[None])
    return spec, calls


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "kimi_linear", "olmo_hybrid", "bailing_hybrid"])
@pytest.mark.parametrize("length,start", [(63, 0), (75, 8), (130, 17)])
def test_augmented_operator_equals_product_of_transitions(family, length, start):
    model = get_model(family)
    (ids,) = random_ids([length], seed=length)
    spec, calls = captured_calls(model, ids)
    for layer in spec.linear:
        call = calls[layer.layer_idx]
        fast = gated_delta.gated_delta_interior(call, start).operator
        recurrent_fn = getattr(sys.modules[layer.modeling_module], layer.recurrent_fn)
        ref = gated_delta.gated_delta_operator_ref(call, start, recurrent_fn)
        assert fast.shape == ref.shape
        assert rel_err(fast, ref) < 1e-4


@pytest.mark.parametrize("family", ["bamba", "falcon_h1", "nemotron_h", "zamba2"])
def test_mamba2_gate_product_equals_running_product(family):
    model = get_model(family)
    (ids,) = random_ids([75], seed=9)
    spec, calls = captured_calls(model, ids)
    for layer in spec.linear:
        call = calls[layer.layer_idx]
        assert rel_err(mamba2.mamba2_interior(call, 8).operator, mamba2.mamba2_operator_ref(call, 8)) < 1e-5


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "kimi_linear", "bamba", "falcon_h1", "olmo_hybrid",
                                    "bailing_hybrid", "nemotron_h", "zamba2", "minimax"])
@pytest.mark.parametrize("seam", [0, 5, 8])
def test_end_state_equals_operator_applied_to_seam_state_plus_interior(family, seam):
    """S_L from the model's own forward == M S_w + E, with S_w the state after the first w tokens."""
    model = get_model(family)
    (ids,) = random_ids([70], seed=11)
    ex = HypicExecutor(model, config=ExecutorConfig(seam_tokens=seam))
    entry = ex.precompute(ids)
    cache, whole = cache_ops.new_cache(model), cache_ops.new_cache(model)
    if seam:
        model.model(input_ids=torch.tensor([ids[:seam]]), past_key_values=cache, position_ids=torch.arange(seam)[None])
    model.model(input_ids=torch.tensor([ids]), past_key_values=whole, position_ids=torch.arange(len(ids))[None])
    for layer in entry.linear:
        assert layer.end_state is None  # composed at query time from the prefix (executor/prefix_anchor.py)
        end = cache_ops.recurrent_state(whole, layer.layer_idx)[0]
        start = cache_ops.recurrent_state(cache, layer.layer_idx) if seam else None
        start = torch.zeros_like(layer.interior_state)[None] if start is None else start
        composed = compose_state(start, layer.interior_operator[None], layer.interior_state[None])
        assert rel_err(composed[0], end) < 1e-4


@pytest.mark.parametrize("shape,op_shape", [((2, 3, 8, 5), (2, 3, 8, 8)), ((1, 4, 16, 6), (1, 4)), ((1, 2, 4, 4), None)])
def test_compose_state_matches_reference(shape, op_shape):
    g = torch.Generator().manual_seed(0)
    s, e = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    m = None if op_shape is None else torch.randn(op_shape, generator=g)
    assert rel_err(compose_state(s, m, e), compose_state_ref(s, m, e)) < 1e-5


def test_merge_conv_tail_takes_fresh_seam_columns_when_interior_is_short():
    seam = torch.arange(4.0).expand(2, 4)
    cached = torch.arange(10.0, 14.0).expand(2, 4)
    assert torch.equal(merge_conv_tail(seam, cached, 4), cached)
    assert torch.equal(merge_conv_tail(seam, cached, 0), seam)
    assert merge_conv_tail(seam, cached, 1)[0].tolist() == [1.0, 2.0, 3.0, 13.0]


def test_conv_only_family_has_no_operator():
    model = get_model("lfm2")
    assert {l.family for l in model_spec(model).linear} == {MixerFamily.CONV_ONLY}
    entry = HypicExecutor(model).precompute(random_ids([20])[0])
    assert all(l.interior_operator is None and l.end_state is None for l in entry.linear)
    assert all(l.conv_tail.shape[-1] == 3 for l in entry.linear)


@pytest.mark.parametrize("family", ["qwen3_5", "kimi_linear", "bamba", "falcon_h1", "lfm2", "olmo_hybrid",
                                    "bailing_hybrid", "nemotron_h", "zamba2", "minimax"])
def test_every_adapter_extracts_the_operator_its_reference_computes(family):
    from hypic_rag.models.families import adapter_for

    model = get_model(family)
    (ids,) = random_ids([40], seed=31)
    spec, calls = captured_calls(model, ids)
    for layer in spec.linear:
        adapter = adapter_for(layer)
        if adapter.interior is None:  # a conv-only layer has no operator to extract
            assert adapter.operator_ref is None and adapter.recurrence is None
            continue
        recurrent_fn = getattr(sys.modules[layer.modeling_module], layer.recurrent_fn) if layer.recurrent_fn else None
        fast = adapter.interior(calls[layer.layer_idx], 6).operator
        assert rel_err(fast, adapter.operator_ref(calls[layer.layer_idx], 6, recurrent_fn)) < 1e-4
