"""Which transformers architectures are supported, and how their layers are read into a ModelSpec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hypic_rag.errors import UnsupportedModelError
from hypic_rag.models.families import GATED_DELTA, KIMI_DELTA, LIGHTNING, MAMBA2, SHORT_CONV, MixerAdapter
from hypic_rag.models.families.lightning import lightning_cache, route_lightning_layers
from hypic_rag.models.specs import (
    AttentionLayerSpec,
    LinearLayerSpec,
    ModelSpec,
    RopeSpec,
    rotary_dim_of,
)


@dataclass(frozen=True)
class ModelTypeInfo:
    """What a model type uses: its linear layers' adapter (models/families: the functions it wraps and
    everything else about the family) and where its decoder layers hold that mixer."""

    adapter: MixerAdapter
    mixer_paths: tuple[str, ...]  # dotted attribute paths from a decoder layer to its linear mixer, tried in order
    nope: bool = False  # attention layers carry no rotary position in their cache
    rope_in: str = "keys"  # the cache tensor holding the rotated dims ("values": MLA caches the rotated key there)
    prepare: Callable[[torch.nn.Module], None] | None = None  # run on the model when its spec is read
    cache: Callable[[object], object] | None = None  # config -> empty cache, where the model takes its own class


SUPPORTED: dict[str, ModelTypeInfo] = {
    "qwen3_5_text": ModelTypeInfo(GATED_DELTA, ("linear_attn",)),
    "qwen3_next": ModelTypeInfo(GATED_DELTA, ("linear_attn",)),
    "olmo_hybrid": ModelTypeInfo(GATED_DELTA, ("linear_attn",)),
    "falcon_h1": ModelTypeInfo(MAMBA2, ("mamba",)),
    "bamba": ModelTypeInfo(MAMBA2, ("mamba",)),
    "granitemoehybrid": ModelTypeInfo(MAMBA2, ("mamba",)),
    "nemotron_h": ModelTypeInfo(MAMBA2, ("mixer",)),
    # Zamba2: a plain layer holds its mixer at .mamba; a hybrid layer (shared attention block + Mamba2)
    # at .mamba_decoder.mamba
    "zamba2": ModelTypeInfo(MAMBA2, ("mamba", "mamba_decoder.mamba")),
    "kimi_linear": ModelTypeInfo(KIMI_DELTA, ("self_attn",), nope=True),
    # Ring-linear (Ling 2.5/3.0): KDA linear layers; MLA attention caches [latent | rotated shared key]
    # as (keys, values), so the position lives in the values
    "bailing_hybrid": ModelTypeInfo(KIMI_DELTA, ("self_attn",), rope_in="values"),
    "lfm2": ModelTypeInfo(SHORT_CONV, ("conv",)),
    # MiniMax-Text-01: lightning attention, recurrence written inline by transformers, routed through
    # families/lightning.py; its model takes only its own cache class
    "minimax": ModelTypeInfo(LIGHTNING, ("self_attn",), prepare=route_lightning_layers, cache=lightning_cache),
}


def supported_model_types() -> list[str]:
    return sorted(SUPPORTED)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no decoder layers at .model.layers; is it a causal LM?")
    return layers


def _rotary_emb(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(model, "model", model)
    return getattr(inner, "rotary_emb", None)


def _mixer_of(layer: torch.nn.Module, info: ModelTypeInfo) -> torch.nn.Module | None:
    """The first of the type's mixer paths that leads to a linear mixer in this decoder layer."""
    for path in info.mixer_paths:
        module = layer
        for name in path.split("."):
            module = getattr(module, name, None)
        if _is_linear_mixer(module, info.adapter):
            return module
    return None


def _is_linear_mixer(module: torch.nn.Module | None, adapter: MixerAdapter) -> bool:
    """A module with a layer index and the conv its family has (lightning attention has none, and is
    known by its slope buffer)."""
    if module is None or not hasattr(module, "layer_idx"):
        return False
    if adapter.conv_fn is None:
        return hasattr(module, "slope_rate")
    return hasattr(module, "conv1d") or hasattr(module, "conv")


def _conv_width(mixer: torch.nn.Module) -> int:
    conv = getattr(mixer, "conv1d", None) or getattr(mixer, "conv", None)
    return 0 if conv is None else int(conv.kernel_size[0])


_ATTENTION_CACHE_TYPES = {"full_attention", "hybrid"}
_LINEAR_CACHE_TYPES = {"linear_attention", "conv", "hybrid"}
_UNSUPPORTED_CACHE_TYPES = {"sliding_attention", "chunked_attention", "hybrid_sliding", "indexed_attention"}


def _cache_layer_types(config) -> list[str]:
    """The per-layer cache kinds transformers itself builds a DynamicCache from."""
    from transformers.cache_utils import get_layer_types_and_kwargs

    return list(get_layer_types_and_kwargs(config)[0])


def model_spec(model: torch.nn.Module) -> ModelSpec:
    """Read a loaded transformers hybrid into a ModelSpec, or raise an UnsupportedModelError naming what
    is supported."""
    config = model.config.get_text_config(decoder=True)
    model_type = config.model_type
    info = SUPPORTED.get(model_type)
    if info is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by hypic_rag; supported: {', '.join(supported_model_types())}"
        )
    if info.prepare is not None:
        info.prepare(model)
    rotary = _rotary_emb(model)
    rope = None if (info.nope or rotary is None) else RopeSpec(rotary_dim=rotary_dim_of(rotary), tensor=info.rope_in)
    linear: list[LinearLayerSpec] = []
    attention: list[AttentionLayerSpec] = []
    layers = _decoder_layers(model)
    cache_types = _cache_layer_types(config)
    if len(cache_types) != len(layers):
        raise UnsupportedModelError(
            f"{model_type}: {len(cache_types)} cache layer types for {len(layers)} decoder layers")
    for idx, (layer, cache_type) in enumerate(zip(layers, cache_types)):
        if cache_type in _UNSUPPORTED_CACHE_TYPES:
            raise UnsupportedModelError(
                f"{model_type} layer {idx} uses {cache_type!r} attention; hypic_rag composes full-attention "
                "K/V only. Use a model whose attention layers are all full attention."
            )
        mixer = _mixer_of(layer, info)
        if cache_type in _LINEAR_CACHE_TYPES:
            if mixer is None:
                raise UnsupportedModelError(
                    f"{model_type} layer {idx}: no linear mixer at .{' or .'.join(info.mixer_paths)}")
            linear.append(
                LinearLayerSpec(
                    layer_idx=idx,
                    family=info.adapter.family,
                    conv_width=_conv_width(mixer),
                    modeling_module=info.adapter.functions_module or type(mixer).__module__,
                    chunk_fn=info.adapter.chunk_fn,
                    recurrent_fn=info.adapter.recurrent_fn,
                )
            )
        if cache_type in _ATTENTION_CACHE_TYPES:
            attention.append(AttentionLayerSpec(layer_idx=idx, rope=rope))
    if not linear:
        raise UnsupportedModelError(
            f"{model_type} model has no linear-attention layers; hypic_rag needs a hybrid model")
    return ModelSpec(
        model_type=model_type,
        linear=tuple(linear),
        attention=tuple(attention),
        max_positions=getattr(config, "max_position_embeddings", None),
    )


def cache_factory(model: torch.nn.Module) -> Callable[[object], object] | None:
    """The model type's own empty-cache builder (config -> cache), or None for DynamicCache."""
    info = SUPPORTED.get(model.config.get_text_config(decoder=True).model_type)
    return None if info is None else info.cache


def linear_mixer(model: torch.nn.Module, layer_idx: int) -> torch.nn.Module:
    info = SUPPORTED[model.config.get_text_config(decoder=True).model_type]
    return _mixer_of(_decoder_layers(model)[layer_idx], info)
