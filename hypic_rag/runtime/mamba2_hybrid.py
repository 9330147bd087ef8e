"""A lean forward over a transformers-loaded Mamba2 hybrid: Bamba, Granite-4.0-H (granitemoehybrid)
and Falcon-H1.

Bamba and Granite stack Mamba2 mixers and full-attention layers one per block, with the same mixer:
in_proj -> [gate | x B C | dt]; a causal conv (with bias) and SiLU over x B C; the SSD scan with
dt = clamp(softplus(dt + dt_bias)) and the D skip (inside the recurrence); a grouped RMSNorm of y * silu(gate); out_proj.
Granite adds its multipliers (embedding, residual, attention scale, logits), an optional RoPE
(NoPE when position_embedding_type is None) and a shared MLP beside optional experts; the experts
run through transformers' own module, capture-safe with its default grouped_mm implementation and
not with "eager" (lean_model.experts_capture_safe); the dispatch-count bound covers dense configs.

Falcon-H1 runs attention and the Mamba2 mixer side by side in every layer (lean_model.ParallelMixers),
with its muP multipliers: the embedding and lm_head, each mixer's input and output, the keys, the
MLP's gate and output, and one per channel of the mixer's projection (its mup_vector); its gated
RMSNorm is optional and may normalise before the gate.

The scan is runtime/recurrences.py's Mamba2Recurrence: fla's simple-GLA kernel on CUDA, the
modeling module's plain-torch chunk scan elsewhere, the recurrence itself for a decode step.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hypic_rag.errors import UnsupportedModelError
from hypic_rag.models.families import MAMBA2
from hypic_rag.models.function_swap import SWAP_LOCK
from hypic_rag.runtime.lean_model import (AttentionWeights, Block, GatedMLP, LeanHybrid, ParallelMixers,
                                         experts_capture_safe, weight_norm)
from hypic_rag.runtime.recurrences import Mamba2Recurrence

MODEL_TYPES = ("bamba", "granitemoehybrid", "falcon_h1")


@dataclass(frozen=True)
class MambaWeights:
    layer_idx: int
    in_proj: torch.Tensor
    in_bias: torch.Tensor | None
    conv: torch.Tensor  # [C, 1, K]
    conv_bias: torch.Tensor | None
    dt_bias: torch.Tensor  # fp32 [H]
    dt_limit: tuple[float, float]
    norm: torch.Tensor | None  # None: no norm, y * silu(gate) (Falcon-H1 without mamba_rms_norm)
    norm_eps: float
    out: torch.Tensor
    out_bias: torch.Tensor | None
    recurrence: Mamba2Recurrence
    mup: torch.Tensor | None = None  # Falcon-H1's per-channel multipliers of the projection [P]
    norm_before_gate: bool = False  # norm(y) * silu(gate) (Falcon-H1's default), else norm(y * silu(gate))


class _WithExperts:
    """Granite's experts (transformers' module) plus its shared MLP."""

    @property
    def capture_safe(self) -> bool:
        return experts_capture_safe(self.experts)

    def __init__(self, experts: torch.nn.Module, shared: GatedMLP):
        self.experts, self.shared = experts, shared

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(x[None])[0] + self.shared(x)


def _mlp(layer) -> GatedMLP | _WithExperts:
    if hasattr(layer, "feed_forward"):  # Bamba, Falcon-H1 (with its two muP multipliers)
        f = layer.feed_forward
        scales = (float(f.gate_multiplier), float(f.down_multiplier)) if hasattr(f, "gate_multiplier") else (1.0, 1.0)
        return GatedMLP(f.gate_proj.weight, f.up_proj.weight, f.down_proj.weight,
                        (f.gate_proj.bias, f.up_proj.bias, f.down_proj.bias), scales)
    w = layer.shared_mlp.input_linear.weight  # Granite: [gate; up] stacked
    half = w.shape[0] // 2
    shared = GatedMLP(w[:half], w[half:], layer.shared_mlp.output_linear.weight)
    return _WithExperts(layer.block_sparse_moe, shared) if layer.block_sparse_moe is not None else shared


def _attention_weights(m: torch.nn.Module, idx: int, index: int, scaling: float) -> AttentionWeights:
    """The parameters of transformers' attention module `m` (layer `idx`, the `index`-th attention layer),
    with Falcon-H1's key multiplier where it has one."""
    return AttentionWeights(idx, index, m.q_proj.weight, m.k_proj.weight, m.v_proj.weight, m.o_proj.weight, scaling,
                            (m.q_proj.bias, m.k_proj.bias, m.v_proj.bias, m.o_proj.bias),
                            key_scale=float(getattr(m, "key_multiplier", 1.0)))


class LeanMamba2Hybrid(LeanHybrid):
    """The parameters of a BambaForCausalLM, GraniteMoeHybridForCausalLM or FalconH1ForCausalLM, and its
    Mamba2 mixer."""

    norm = staticmethod(weight_norm)

    def __init__(self, model: torch.nn.Module):
        config = model.config.get_text_config(decoder=True)
        if config.model_type not in MODEL_TYPES:
            raise UnsupportedModelError(f"{config.model_type} is not a Bamba, Granite-4.0-H or Falcon-H1 model")
        if config.hidden_act != "silu":
            raise UnsupportedModelError(f"the lean runtime runs SiLU MLPs; this model uses {config.hidden_act}")
        inner = model.model
        granite, falcon = config.model_type == "granitemoehybrid", config.model_type == "falcon_h1"
        self.eps = float(config.rms_norm_eps)
        self.embed = inner.embed_tokens.weight
        self.final_norm = (inner.norm if granite else inner.final_layernorm).weight
        self.lm_head = model.lm_head.weight
        self.rotary = getattr(inner, "rotary_emb", None)
        self.heads, self.kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        if granite:
            self.embed_scale = float(config.embedding_multiplier)
            self.residual_scale = float(config.residual_multiplier)
            self.logits_scale = float(config.logits_scaling)
        if falcon:
            self.embed_scale = float(config.embedding_multiplier)
            self.logits_scale = 1.0 / float(config.lm_head_multiplier)
        scaling = float(config.attention_multiplier) if granite else self.head_dim ** -0.5
        blocks, attention_index = [], 0
        for idx, layer in enumerate(inner.layers):
            if falcon:  # Mamba2 and attention side by side in every layer
                attention = _attention_weights(layer.self_attn, idx, attention_index, scaling)
                attention_index += 1
                mixers = ParallelMixers(self._mamba(layer.mamba), attention, float(layer.mamba.ssm_in_multiplier),
                                        float(layer.ssm_out_multiplier), float(layer.attention_in_multiplier),
                                        float(layer.attn_out_multiplier))
                blocks.append(Block(mixers, layer.input_layernorm.weight, layer.pre_ff_layernorm.weight, _mlp(layer)))
                continue
            if getattr(layer, "mamba", None) is not None:
                blocks.append(Block(self._mamba(layer.mamba), layer.input_layernorm.weight,
                                    (layer.post_attention_layernorm if granite else layer.pre_ff_layernorm).weight,
                                    _mlp(layer)))
                continue
            mixer = _attention_weights(layer.self_attn, idx, attention_index, scaling)
            attention_index += 1
            blocks.append(Block(mixer, layer.input_layernorm.weight,
                                (layer.post_attention_layernorm if granite else layer.pre_ff_layernorm).weight,
                                _mlp(layer)))
        self.blocks = tuple(blocks)
        first = next(b.mixer.linear if isinstance(b.mixer, ParallelMixers) else b.mixer for b in self.blocks
                     if isinstance(b.mixer, (MambaWeights, ParallelMixers)))
        self.conv_width = int(first.conv.shape[-1])
        self._setup(model)

    def _mamba(self, m) -> MambaWeights:
        self.mamba_heads, self.mamba_head_dim = int(m.num_heads), int(m.head_dim)
        self.groups, self.state_size, self.inner = int(m.n_groups), int(m.ssm_state_size), int(m.intermediate_size)
        with SWAP_LOCK:  # the original chunk scan, never a swap in progress
            scan = getattr(sys.modules[type(m).__module__], MAMBA2.chunk_fn)
        recurrence = Mamba2Recurrence(-m.A_log.detach().float().exp(), m.D.detach().float(), self.mamba_head_dim,
                                      scan, int(m.chunk_size))
        low, high = m.time_step_limit
        norm = m.norm if getattr(m, "mamba_rms_norm", True) else None  # Falcon-H1 may have none
        mup = getattr(m, "mup_vector", None)
        return MambaWeights(m.layer_idx, m.in_proj.weight, m.in_proj.bias, m.conv1d.weight, m.conv1d.bias,
                            m.dt_bias.detach().float(), (float(low), float(high)),
                            None if norm is None else norm.weight,
                            1e-6 if norm is None else float(norm.variance_epsilon), m.out_proj.weight,
                            m.out_proj.bias, recurrence, None if mup is None else mup.reshape(-1),
                            bool(getattr(norm, "norm_before_gate", False)))

    def _linear(self, w: MambaWeights, x: torch.Tensor, context) -> torch.Tensor:
        n, heads, p = x.shape[0], self.mamba_heads, self.mamba_head_dim
        projected = F.linear(x, w.in_proj, w.in_bias)
        if w.mup is not None:
            projected = projected * w.mup
        gate, xbc, dt = torch.split(projected, [self.inner, projected.shape[-1] - self.inner - heads, heads], -1)
        mixed = context.conv(w, xbc)  # after the causal conv and SiLU, in the context's layout
        rows = mixed.shape[0]
        xs, b, c = torch.split(mixed, [self.inner, self.groups * self.state_size, self.groups * self.state_size], -1)
        xs = xs.reshape(rows, heads, p)
        b = b.reshape(rows, self.groups, self.state_size)
        c = c.reshape(rows, self.groups, self.state_size)
        dt = torch.clamp(F.softplus(dt.float() + w.dt_bias), min=w.dt_limit[0], max=w.dt_limit[1])
        y = context.recur(w, (xs, dt, b, c))  # [N, H, P] fp32, with the D skip
        return F.linear(self._gated_norm(y.reshape(n, -1), gate, w).to(x.dtype), w.out, w.out_bias)

    def _gated_norm(self, y: torch.Tensor, gate: torch.Tensor, w: MambaWeights) -> torch.Tensor:
        """RMSNorm over each of the groups of y * silu(gate) in fp32, then the weight (as transformers);
        with norm_before_gate the norm of y, then times silu(gate); without a norm y * silu(gate)."""
        if w.norm is None:
            return y.float() * F.silu(gate.float())
        h = y.float() if w.norm_before_gate else y.float() * F.silu(gate.float())
        h = h.view(h.shape[0], self.groups, -1)
        h = w.norm.view(self.groups, -1) * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + w.norm_eps))
        h = h.view(y.shape)
        return h * F.silu(gate.float()) if w.norm_before_gate else h
