"""The continuation mask (runtime/contexts.py: causal_after): the bottom-right causal mask a CUDA
forward hands to SDPA as a CausalBias is the position-causal mask key position <= query position,
and attention over it gives the same outputs as over the explicit boolean mask."""

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right

from hypic_rag.runtime.contexts import attention, causal_after


@pytest.mark.parametrize("cached,n", [(0, 5), (1, 7), (13, 4), (6, 19)])
def test_the_mask_is_key_position_at_most_query_position(cached, n):
    positions = torch.arange(cached, cached + n)
    every = torch.arange(cached + n)
    want = every[None, :] <= positions[:, None]
    assert torch.equal(causal_after(cached, n, torch.device("cpu")), want)
    assert torch.equal(causal_lower_right(n, cached + n)._materialize(), want)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
def test_attention_over_the_causal_bias_equals_the_boolean_mask(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    cached, n, d = 11, 9, 16
    q = torch.randn(n, heads, d, generator=g)
    keys, values = (torch.randn(kv_heads, cached + n, d, generator=g) for _ in range(2))
    dense = attention(q, keys, values, causal_after(cached, n, torch.device("cpu")), d ** -0.5)
    bias = attention(q, keys, values, causal_lower_right(n, cached + n), d ** -0.5)
    assert (dense - bias).abs().max() < 1e-5

