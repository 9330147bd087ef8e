"""Cached keys re-rotated to another offset equal keys computed at that offset."""

import pytest
import torch

from conftest import HYBRIDS, get_model, random_ids
from hypic_rag.executor import cache_ops
from hypic_rag.models.registry import model_spec
from hypic_rag.ops.rope import shift_keys, shift_keys_per_token, shift_keys_ref


def keys_at(model, ids, start, layer_idx):
    cache = cache_ops.new_cache(model)
    positions = torch.arange(start, start + len(ids))[None]
    model.model(input_ids=torch.tensor([ids]), past_key_values=cache, position_ids=positions)
    return cache_ops.kv(cache, layer_idx)[0]


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_next", "bamba", "falcon_h1"])
@pytest.mark.parametrize("shift", [1, 37, 1000, 3000])
def test_shifted_keys_equal_keys_at_real_positions(family, shift):
    """The first attention layer's pre-RoPE keys do not depend on position (earlier layers are
    linear or the same attention layer), so only the rotation differs."""
    model = get_model(family)
    spec = model_spec(model)
    first_attn = spec.attention[0].layer_idx
    assert spec.attention[0].rope is not None
    (ids,) = random_ids([33], seed=shift)
    at_zero = keys_at(model, ids, 0, first_attn)
    at_shift = keys_at(model, ids, shift, first_attn)
    moved = shift_keys(at_zero, model.model.rotary_emb, shift)
    assert (moved - at_shift).abs().max() < 2e-4 * max(1.0, at_shift.abs().max().item())
    back = shift_keys(at_shift, model.model.rotary_emb, -shift)
    assert (back - at_zero).abs().max() < 2e-4 * max(1.0, at_zero.abs().max().item())


@pytest.mark.parametrize("family", ["qwen3_5", "bamba"])
def test_shift_matches_reference(family):
    model = get_model(family)
    keys = torch.randn(1, 2, 9, 16, generator=torch.Generator().manual_seed(0))
    rotary = model.model.rotary_emb
    assert (shift_keys(keys, rotary, 517) - shift_keys_ref(keys, rotary, 517)).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_per_token_shift_matches_the_reference_segment_by_segment(family):
    """Three segments moved by their own shifts (0 included) in one rotation."""
    rotary = get_model(family).model.rotary_emb
    keys = torch.randn(1, 2, 12, 16, generator=torch.Generator().manual_seed(1))
    spans, shifts = [(0, 5, 0), (5, 9, 517), (9, 12, 3001)], []
    for a, b, shift in spans:
        shifts += [shift] * (b - a)
    moved = shift_keys_per_token(keys, rotary, torch.tensor(shifts))
    for a, b, shift in spans:
        assert (moved[..., a:b, :] - shift_keys_ref(keys[..., a:b, :], rotary, shift)).abs().max() < 1e-4


def test_partial_rotary_leaves_pass_through_dims_alone():
    model = get_model("qwen3_5")
    rotary = model.model.rotary_emb
    rot = 2 * rotary.inv_freq.numel()
    assert rot < 16
    keys = torch.randn(1, 2, 5, 16)
    assert torch.equal(shift_keys(keys, rotary, 77)[..., rot:], keys[..., rot:])


def test_nope_model_has_no_rotation():
    assert all(a.rope is None for a in model_spec(get_model("kimi_linear")).attention)


def cache_at(model, ids, start, layer_idx):
    cache = cache_ops.new_cache(model)
    positions = torch.arange(start, start + len(ids))[None]
    model.model(input_ids=torch.tensor([ids]), past_key_values=cache, position_ids=positions)
    keys, values = cache_ops.kv(cache, layer_idx)
    return {"keys": keys, "values": values}


@pytest.mark.parametrize("family", [f for f in HYBRIDS if f != "lfm2"] + ["granitemoehybrid",
                                                                            "granitemoehybrid_dense"])
def test_the_spec_names_the_cached_tensor_that_carries_position(family):
    """Run one prompt at positions 0.. and at 41..: in every attention layer the tensor the spec names
    differs exactly by a rotation of 41 (an MLA cache, as Ring-linear's, keeps it in the values slot),
    and whatever the spec calls position-free (the other tensor; both under NoPE) is unchanged."""
    model = get_model(family)
    spec = model_spec(model)
    (ids,) = random_ids([29], seed=7)
    rotary = getattr(model.model, "rotary_emb", None)
    for layer in spec.attention:
        at_zero, at_shift = cache_at(model, ids, 0, layer.layer_idx), cache_at(model, ids, 41, layer.layer_idx)
        rotated = () if layer.rope is None else (layer.rope.tensor,)
        for name in ("keys", "values"):
            scale = max(1.0, at_shift[name].abs().max().item())
            expected = shift_keys(at_zero[name], rotary, 41) if name in rotated else at_zero[name]
            assert (expected - at_shift[name]).abs().max() < 2e-4 * scale, (family, layer.layer_idx, name)
