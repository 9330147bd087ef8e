"""The lean runtime's attention masks and kernels (runtime/contexts.py). The continuation mask
(causal_after): the bottom-right causal mask a CUDA forward hands to SDPA as a CausalBias is the
position-causal mask key position <= query position, and attention over it gives the same outputs
as over the explicit boolean mask. The seam pass's few-query attention equals SDPA under the same
arbitrary mask, with and without grouped heads, in fp32 and bf16, below and above its score budget."""

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right

from hypic_rag.runtime import contexts
from hypic_rag.runtime.contexts import attention, causal_after, few_query_attention


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



@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("budget", [contexts.FEW_QUERY_SCORES, 1])  # 1: every call falls back to fused SDPA
def test_few_query_attention_equals_sdpa_under_an_arbitrary_mask(heads, kv_heads, dtype, tol, budget, monkeypatch):
    monkeypatch.setattr(contexts, "FEW_QUERY_SCORES", budget)
    g = torch.Generator().manual_seed(1)
    n, t, d = 13, 70, 16
    q = torch.randn(n, heads, d, generator=g).to(dtype)
    keys, values = (torch.randn(kv_heads, t, d, generator=g).to(dtype) for _ in range(2))
    key_positions = torch.randperm(t, generator=g)  # cached rows in any order, as a seam pass holds them
    query_positions = torch.sort(torch.randperm(t, generator=g)[:n]).values
    hidden = key_positions[None, :] > query_positions[:, None]
    want = attention(q.float(), keys.float(), values.float(), ~hidden, d ** -0.5)
    got = few_query_attention(q, keys, values, hidden, d ** -0.5)
    assert got.shape == (n, heads, d) and got.dtype == dtype
    assert float((got.float() - want).abs().max()) < tol
