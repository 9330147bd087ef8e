"""MiniMax lightning attention: the routed forward against transformers' own, the block recurrence
against the plain one, and the operator against the product of per-token transitions."""

import copy

import pytest
import torch

from conftest import get_model, random_ids
from hypic_rag.executor import cache_ops
from hypic_rag.models.families import lightning
from hypic_rag.models.registry import model_spec
from test_transition import captured_calls, rel_err


def original_model():
    """A copy of the tiny MiniMax whose lightning layers run transformers' own forward."""
    model = copy.deepcopy(get_model("minimax"))
    for module in model.modules():
        if getattr(module, "_hypic_routed", False):
            del module.forward
            module._hypic_routed = False
    return model


def test_routed_forward_equals_transformers_on_a_first_forward():
    routed, original = get_model("minimax"), original_model()
    model_spec(routed)  # reading the spec routes the layers
    assert all(getattr(m, "_hypic_routed", False) for m in routed.modules() if type(m).__name__ == lightning.LIGHTNING_CLASS)
    assert not any(getattr(m, "_hypic_routed", False) for m in original.modules())
    ids = torch.tensor(random_ids([45], seed=3))  # 45 tokens: three blocks of 16, the last one partial
    with torch.no_grad():
        assert (routed(input_ids=ids).logits - original(input_ids=ids).logits).abs().max() < 1e-6


def test_continuing_from_a_state_equals_one_forward_where_transformers_own_cache_does_not():
    """The tiny config's layer 0 is lightning: transformers' MiniMaxCache then drops layer 0's state
    between forwards; the routed layers over hypic_rag's cache continue exactly."""
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    routed, original = get_model("minimax"), original_model()
    ids = torch.tensor(random_ids([45], seed=4))
    with torch.no_grad():
        whole = original(input_ids=ids).logits
        cache = cache_ops.new_cache(routed)
        parts = [routed(input_ids=ids[:, a:b], past_key_values=cache, use_cache=True).logits
                 for a, b in ((0, 30), (30, 44), (44, 45))]
        assert (torch.cat(parts, 1) - whole).abs().max() < 1e-5
        own = MiniMaxCache()
        theirs = [original(input_ids=ids[:, a:b], past_key_values=own, use_cache=True).logits
                  for a, b in ((0, 30), (30, 45))]
        assert (torch.cat(theirs, 1) - whole).abs().max() > 1e-3


@pytest.mark.parametrize("steps,block,with_state", [(45, 16, False), (45, 16, True), (7, 256, True), (64, 16, True)])
def test_block_form_equals_the_plain_recurrence(steps, block, with_state):
    g = torch.Generator().manual_seed(steps)
    q, k, v = (torch.randn(2, steps, 3, 8, generator=g) for _ in range(3))
    slope = torch.tensor([0.5, 0.05, 0.005])[:, None, None]
    state = torch.randn(2, 3, 8, 8, generator=g) if with_state else None
    out, final = lightning.lightning_attention(q, k, v, slope, state, True, block_size=block)
    ref_out, ref_final = lightning.lightning_recurrent(q, k, v, slope, state, True)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(final, ref_final) < 1e-5


@pytest.mark.parametrize("start", [0, 8, 30])
def test_operator_is_the_product_of_per_token_transitions_and_a_multiple_of_identity(start):
    model = get_model("minimax")
    (ids,) = random_ids([40], seed=12)
    spec, calls = captured_calls(model, ids)
    for layer in spec.linear:
        call = calls[layer.layer_idx]
        product = lightning.lightning_transition_product(call, start, lightning.lightning_recurrent)
        scalar = lightning.lightning_interior(call, start).operator  # [B, H]
        eye = torch.eye(product.shape[-1])
        assert rel_err(product, scalar[..., None, None] * eye) < 1e-5
        assert rel_err(scalar, lightning.lightning_operator_ref(call, start, lightning.lightning_recurrent)) < 1e-5
        assert bool((scalar < 1).all()) and bool((scalar > 0).all())  # a real decay over 40 - start tokens


def test_a_minimax_entry_has_no_conv_tail():
    from hypic_rag import HypicExecutor

    entry = HypicExecutor(get_model("minimax")).precompute(random_ids([20])[0])
    assert all(l.conv_tail is None and l.interior_state.shape == (4, 16, 16) for l in entry.linear)
    assert all(l.interior_operator.shape == (4,) for l in entry.linear)


def test_a_minimax_entry_survives_the_store_format():
    from hypic_rag import HypicExecutor
    from hypic_rag.store.serde import entry_from_bytes, entry_to_bytes

    entry = HypicExecutor(get_model("minimax")).precompute(random_ids([20])[0])
    back = entry_from_bytes(entry_to_bytes(entry))
    for a, b in zip(entry.linear, back.linear):
        assert b.conv_tail is None and torch.equal(a.interior_state, b.interior_state)
        assert torch.equal(a.interior_operator, b.interior_operator)
