"""Which transformers architectures are supported, and how their layers are read into a ModelSpec."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hypic_rag.errors import UnsupportedModelError
from hypic_rag.models.families import GATED_DELTA, KIMI_DELTA, MAMBA2, SHORT_CONV, MixerAdapter
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
    mixer_attr: str  # attribute of the decoder layer holding the linear mixer
    nope: bool = False  # attention layers carry no rotary position in their cached keys


SUPPORTED: dict[str, ModelTypeInfo] = {
    "qwen3_5_text": ModelTypeInfo(GATED_DELTA, "linear_attn"),
    "qwen3_next": ModelTypeInfo(GATED_DELTA, "linear_attn"),
    "falcon_h1": ModelTypeInfo(MAMBA2, "mamba"),
    "bamba": ModelTypeInfo(MAMBA2, "mamba"),
    "granitemoehybrid": ModelTypeInfo(MAMBA2, "mamba"),
    "kimi_linear": ModelTypeInfo(KIMI_DELTA, "self_attn", nope=True),
    "lfm2": ModelTypeInfo(SHORT_CONV, "conv"),
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


def _is_linear_mixer(module: torch.nn.Module | None) -> bool:
    return module is not None and hasattr(module, "layer_idx") and (
        hasattr(module, "conv1d") or hasattr(module, "conv")
    )


def _conv_width(mixer: torch.nn.Module) -> int:
    conv = getattr(mixer, "conv1d", None) or getattr(mixer, "conv")
    return int(conv.kernel_size[0])


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
    rotary = _rotary_emb(model)
    rope = None if (info.nope or rotary is None) else RopeSpec(rotary_dim=rotary_dim_of(rotary))
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
        mixer = getattr(layer, info.mixer_attr, None)
        if cache_type in _LINEAR_CACHE_TYPES:
            if not _is_linear_mixer(mixer):
                raise UnsupportedModelError(f"{model_type} layer {idx}: no linear mixer at .{info.mixer_attr}")
            linear.append(
                LinearLayerSpec(
                    layer_idx=idx,
                    family=info.adapter.family,
                    conv_width=_conv_width(mixer),
                    modeling_module=type(mixer).__module__,
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


def linear_mixer(model: torch.nn.Module, layer_idx: int) -> torch.nn.Module:
    info = SUPPORTED[model.config.get_text_config(decoder=True).model_type]
    return getattr(_decoder_layers(model)[layer_idx], info.mixer_attr)
