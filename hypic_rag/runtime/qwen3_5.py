"""A lean forward over a transformers-loaded Qwen3.5 hybrid (Gated DeltaNet + gated full attention).

transformers' eager forward spends most of a small request in Python and per-module glue: cache
objects, mask builders, kernel-hub dispatch, one forward per module. This one reads the same
parameters (no second copy of the weights: only the RMSNorms' 1 + w and -exp(A_log), a few
hundred floats per layer, are precomputed); the layer loop and attention are runtime/lean_model.py's.

On CPU the recurrence is transformers' own plain-torch chunk / step function (the references the
fast kernels are tested against); the forward is the reference for the CUDA path.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hypic_rag.errors import UnsupportedModelError
from hypic_rag.models.families import GATED_DELTA
from hypic_rag.models.function_swap import SWAP_LOCK
from hypic_rag.runtime.lean_model import AttentionWeights, Block, GatedMLP, LeanHybrid, normalized
from hypic_rag.runtime.recurrences import GatedDeltaRecurrence

MODEL_TYPES = ("qwen3_5_text",)


@dataclass(frozen=True)
class LinearWeights:
    """A Gated DeltaNet layer's parameters. `projections`: the input projections' weights as the family
    lays them out (Qwen3.5: qkv, z, b, a; Qwen3-Next: qkvz, ba fused per key-head group)."""

    layer_idx: int
    projections: tuple[torch.Tensor, ...]
    conv: torch.Tensor  # [C, 1, K]
    neg_a: torch.Tensor  # -exp(A_log), fp32 [H]
    dt_bias: torch.Tensor
    norm: torch.Tensor
    norm_eps: float
    out: torch.Tensor
    recurrence: GatedDeltaRecurrence
    conv_bias: torch.Tensor | None = None

    @classmethod
    def of(cls, idx: int, m: torch.nn.Module, projections: tuple[str, ...],
           recurrence: GatedDeltaRecurrence) -> "LinearWeights":
        """The parameters of transformers' Gated DeltaNet module `m`, its projections by attribute name."""
        return cls(idx, tuple(getattr(m, name).weight for name in projections), m.conv1d.weight,
                   -m.A_log.detach().float().exp(), m.dt_bias, m.norm.weight, float(m.norm.variance_epsilon),
                   m.out_proj.weight, recurrence)


def _one_plus(norm: torch.nn.Module) -> torch.Tensor:
    return (1.0 + norm.weight.detach().float())


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return (weight * normalized(x, eps) * F.silu(gate.float())).to(x.dtype)


class LeanQwen3_5(LeanHybrid):
    """The parameters of a Qwen3_5ForCausalLM, and its Gated DeltaNet mixer. A subclass for a sibling
    layout (runtime/qwen3_next.py) overrides how a linear layer's weights and an MLP are read, and
    `_linear`."""

    model_types = MODEL_TYPES
    family = "Qwen3.5 text"

    def __init__(self, model: torch.nn.Module):
        config = model.config.get_text_config(decoder=True)
        if config.model_type not in self.model_types:
            raise UnsupportedModelError(f"{config.model_type} is not a {self.family} model")
        inner = model.model
        self.eps = float(config.rms_norm_eps)
        self.embed = inner.embed_tokens.weight
        self.final_norm = _one_plus(inner.norm)
        self.lm_head = model.lm_head.weight
        self.rotary = inner.rotary_emb
        self.head_dim = int(config.head_dim)
        self.heads, self.kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
        self.conv_width = int(config.linear_conv_kernel_dim)
        self.key_heads, self.value_heads = int(config.linear_num_key_heads), int(config.linear_num_value_heads)
        self.key_dim, self.value_dim = int(config.linear_key_head_dim), int(config.linear_value_head_dim)
        first_linear = next(layer.linear_attn for layer in inner.layers if hasattr(layer, "linear_attn"))
        module = sys.modules[type(first_linear).__module__]
        with SWAP_LOCK:  # the originals, never a swap in progress
            recurrence = GatedDeltaRecurrence(getattr(module, GATED_DELTA.chunk_fn),
                                              getattr(module, GATED_DELTA.recurrent_fn))
        blocks, attention_index = [], 0
        for idx, layer in enumerate(inner.layers):
            if config.layer_types[idx] == "linear_attention":
                mixer = self._linear_weights(idx, layer.linear_attn, recurrence)
            else:
                m = layer.self_attn
                mixer = AttentionWeights(idx, attention_index, m.q_proj.weight, m.k_proj.weight, m.v_proj.weight,
                                         m.o_proj.weight, self.head_dim ** -0.5, q_norm=_one_plus(m.q_norm),
                                         k_norm=_one_plus(m.k_norm), gated=True)
                attention_index += 1
            blocks.append(Block(mixer, _one_plus(layer.input_layernorm), _one_plus(layer.post_attention_layernorm),
                                self._mlp(layer.mlp)))
        self.blocks = tuple(blocks)
        self._setup(model)

    @staticmethod
    def _linear_weights(idx: int, m: torch.nn.Module, recurrence: GatedDeltaRecurrence) -> LinearWeights:
        return LinearWeights.of(idx, m, ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a"), recurrence)

    @staticmethod
    def _mlp(mlp: torch.nn.Module):
        return GatedMLP(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)

    def _linear(self, w: LinearWeights, x: torch.Tensor, context) -> torch.Tensor:
        n = x.shape[0]
        qkv, z_proj, b_proj, a_proj = w.projections
        mixed = context.conv(w, F.linear(x, qkv))  # after the causal conv and SiLU, in the context's layout
        q, k, v = torch.split(mixed, [self.key_heads * self.key_dim] * 2 + [self.value_heads * self.value_dim], -1)
        rows = mixed.shape[0]
        q = q.view(rows, self.key_heads, self.key_dim)
        k = k.view(rows, self.key_heads, self.key_dim)
        v = v.view(rows, self.value_heads, self.value_dim)
        beta = torch.sigmoid(F.linear(x, b_proj))
        g = w.neg_a * F.softplus(F.linear(x, a_proj).float() + w.dt_bias)
        out = context.recur(w, (q, k, v, g, beta))  # [N, Hv, dv] (g, beta: [N, Hv] per token)
        z = F.linear(x, z_proj).view(n, self.value_heads, self.value_dim)
        out = gated_rms_norm(out, z, w.norm, w.norm_eps).reshape(n, -1)
        return F.linear(out, w.out)
