"""Reading and writing the per-layer parts of a transformers DynamicCache (batch size 1)."""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class LinearOnlyCache(DynamicCache):
    """DynamicCache for models with no attention layer at all.

    transformers' DynamicCache refuses get_seq_length / get_mask_sizes when no layer is attention,
    which makes every cached forward of such a model fail. In these models the length only feeds
    the causal-mask construction, which no linear layer reads; hypic_rag always passes explicit
    position_ids, so answering an empty attention context is safe.
    """

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length, 0


def new_cache(model: torch.nn.Module) -> DynamicCache:
    from hypic_rag.models.registry import cache_factory

    own = cache_factory(model)
    if own is not None:  # a model that takes only its own cache class (MiniMax), laid out as DynamicCache
        return own(model.config)
    cache = DynamicCache(config=model.config)
    if not any(isinstance(layer, DynamicLayer) for layer in cache.layers):
        cache = LinearOnlyCache(config=model.config)
    return cache


def clone_cache(cache: DynamicCache) -> DynamicCache:
    return copy.deepcopy(cache)


def repeat_batch(cache: DynamicCache, rows: int) -> DynamicCache:
    """A copy of a batch-1 cache with every tensor repeated to `rows` rows (for batched precompute)."""
    out = clone_cache(cache)
    for layer in out.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                setattr(layer, name, t.repeat(rows, *([1] * (t.dim() - 1))))
        for states in (getattr(layer, "conv_states", None), getattr(layer, "recurrent_states", None)):
            if isinstance(states, dict):
                for idx, t in list(states.items()):
                    if isinstance(t, torch.Tensor) and t.dim() > 0:
                        states[idx] = t.repeat(rows, *([1] * (t.dim() - 1)))
    return out


def recurrent_state(cache: DynamicCache, layer_idx: int) -> torch.Tensor | None:
    layer = cache.layers[layer_idx]
    if not layer.is_recurrent_states_initialized[0]:
        return None
    return layer.recurrent_states[0]


def conv_state(cache: DynamicCache, layer_idx: int) -> torch.Tensor | None:
    layer = cache.layers[layer_idx]
    if not layer.is_conv_states_initialized[0]:
        return None
    return layer.conv_states[0]


def set_recurrent_state(cache: DynamicCache, layer_idx: int, state: torch.Tensor) -> None:
    """Write [B, ...] as the layer's recurrent state (initialising the slot if needed)."""
    layer = cache.layers[layer_idx]
    current = recurrent_state(cache, layer_idx)
    if current is not None:
        state = state.to(dtype=current.dtype, device=current.device)
    layer.update_recurrent_state(state, state_idx=0)


def set_conv_state(cache: DynamicCache, layer_idx: int, tail: torch.Tensor) -> None:
    """Write [B, C, K] as the layer's conv state, marked so the next forward continues from it."""
    layer = cache.layers[layer_idx]
    if not layer.is_conv_states_initialized[0]:
        layer.lazy_initialization(conv_states=tail, state_idx=0, conv_kernel_size=tail.shape[-1])
    layer.conv_states[0].copy_(tail.to(layer.conv_states[0].dtype))
    layer.has_previous_state[0] = True


def append_kv(cache: DynamicCache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Append [B, kv_heads, T, D] keys/values to an attention layer."""
    cache.layers[layer_idx].update(keys, values)


def kv(cache: DynamicCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    layer = cache.layers[layer_idx]
    return layer.keys, layer.values


def cache_nbytes(cache: DynamicCache) -> int:
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
        for states in (getattr(layer, "conv_states", {}), getattr(layer, "recurrent_states", {})):
            for t in states.values():
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def crop_kv(cache: DynamicCache, layer_idx: int, length: int) -> None:
    """Keep an attention layer's first `length` K/V rows."""
    layer = cache.layers[layer_idx]
    layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def set_kv(cache: DynamicCache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """An attention layer's K/V become exactly these tensors."""
    layer = cache.layers[layer_idx]
    layer.keys, layer.values = keys, values


def replace_kv_rows(cache: DynamicCache, layer_idx: int, rows: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor) -> None:
    """Rows `rows` of an attention layer's K/V become keys/values [B, kv_heads, len(rows), D] (out of
    place: the cache's tensors may be shared)."""
    layer = cache.layers[layer_idx]
    layer.keys = layer.keys.index_copy(2, rows, keys.to(layer.keys.dtype))
    layer.values = layer.values.index_copy(2, rows, values.to(layer.values.dtype))


def linear_states(cache: DynamicCache, spec) -> dict[int, tuple[torch.Tensor | None, torch.Tensor | None]]:
    """A copy of every linear layer's (recurrent state, conv state), for restore_linear_states."""
    copy_of = lambda t: None if t is None else t.clone()  # noqa: E731
    return {l.layer_idx: (copy_of(recurrent_state(cache, l.layer_idx)), copy_of(conv_state(cache, l.layer_idx)))
            for l in spec.linear}


def restore_linear_states(cache: DynamicCache, saved: dict) -> None:
    for layer_idx, (state, conv) in saved.items():
        if state is not None:
            set_recurrent_state(cache, layer_idx, state.clone())
        if conv is not None:
            set_conv_state(cache, layer_idx, conv.clone())
