"""What every lean hybrid forward shares: norms, RoPE, attention over a context, the layer loop.

A lean model reads the parameters of the transformers-loaded model (no second copy of the weights)
and runs its layer stack as a flat sequence of tensor ops over a request's new tokens. How
attention finds its keys and how each linear layer's conv and recurrence continue from their state
is the `context` handed to `forward` (runtime/contexts.py for plain continuation, seam_chain.py
for every seam of a hypic request at once, prefix_runs.py and segment_runs.py for runs that each
need their own state). A family subclass supplies its linear mixer (`_linear`) and reads its
checkpoint's layout into Blocks: runtime/qwen3_5.py (and its sibling qwen3_next.py) and
runtime/mamba2_hybrid.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """(x / rms(x)) * scale in fp32, back to x's dtype (scale: the fp32 weight, or 1 + w for zero-centred
    norms). One F.rms_norm over fp32 input and scale: on CUDA its fused kernel, elsewhere the same ops
    as written out."""
    return F.rms_norm(x.float(), (x.shape[-1],), scale.float(), eps).type_as(x)


def normalized(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) computed in fp32, cast back to x's dtype (the fused F.rms_norm on CUDA)."""
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def weight_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama-style RMSNorm: normalised in fp32, cast back, then times the weight (Bamba, Granite)."""
    return weight * normalized(x, eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the leading cos.shape[-1] dims of x [..., N, heads, D] with cos/sin [N, rot]."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


@dataclass(frozen=True)
class AttentionWeights:
    layer_idx: int
    index: int  # among the attention layers
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    scaling: float
    biases: tuple = (None, None, None, None)  # q, k, v, o
    q_norm: torch.Tensor | None = None  # per-head RMSNorm scales (Qwen3.5: 1 + w)
    k_norm: torch.Tensor | None = None
    gated: bool = False  # q_proj also yields a per-head output gate (Qwen3.5)
    key_scale: float = 1.0  # keys times this before their norm and RoPE (Falcon-H1's key multiplier)


@dataclass(frozen=True)
class GatedMLP:
    """down(act(gate x) * up x): Qwen's and Bamba's MLP, and Granite's shared MLP (its input_linear's
    two halves as gate and up, views of the same weight)."""

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    biases: tuple = (None, None, None)
    scales: tuple[float, float] = (1.0, 1.0)  # the gate's pre-activation and the output (Falcon-H1's muP)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g, u, d = self.biases
        gate = F.linear(x, self.gate, g)
        if self.scales[0] != 1.0:
            gate = gate * self.scales[0]
        out = F.linear(F.silu(gate) * F.linear(x, self.up, u), self.down, d)
        return out * self.scales[1] if self.scales[1] != 1.0 else out


@dataclass(frozen=True)
class ParallelMixers:
    """A linear mixer and attention side by side over one normed input, their outputs summed, each
    with its input and output multiplier (Falcon-H1's layers)."""

    linear: object  # the family's linear-layer weights
    attention: AttentionWeights
    linear_in: float = 1.0
    linear_out: float = 1.0
    attention_in: float = 1.0
    attention_out: float = 1.0


CAPTURE_SAFE_EXPERTS = ("grouped_mm", "batched_mm")


def experts_capture_safe(moe: torch.nn.Module) -> bool:
    """Whether transformers' MoE block `moe` runs with static shapes and no host synchronisation, so a
    CUDA graph can capture it and dynamo compile it whole: its experts implementation (read at each
    forward from the config) is grouped_mm (transformers' default: tokens per expert counted with histc
    on the device) or batched_mm. "eager" loops over the experts hit (nonzero: a sync, data-dependent
    shapes)."""
    return getattr(moe.experts.config, "_experts_implementation", "eager") in CAPTURE_SAFE_EXPERTS


@dataclass(frozen=True)
class Block:
    mixer: object  # the family's linear-layer weights, AttentionWeights, or ParallelMixers of both
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    ffn: Callable[[torch.Tensor], torch.Tensor]


class LeanHybrid:
    """The forward shared by every family; subclasses set the attributes below and `_linear`."""

    blocks: tuple[Block, ...]
    embed: torch.Tensor
    lm_head: torch.Tensor
    final_norm: torch.Tensor
    eps: float
    rotary: torch.nn.Module | None  # None: NoPE (no rotary position in any key)
    head_dim: int
    heads: int
    kv_heads: int
    conv_width: int
    embed_scale: float = 1.0
    residual_scale: float = 1.0
    logits_scale: float = 1.0
    norm = staticmethod(rms_norm)  # how the block and final norms apply their scale

    def _setup(self, model: torch.nn.Module) -> None:
        self.model = model
        mixers = [m for b in self.blocks
                  for m in ((b.mixer.linear, b.mixer.attention) if isinstance(b.mixer, ParallelMixers) else (b.mixer,))]
        self.linear_layers = tuple(m.layer_idx for m in mixers if not isinstance(m, AttentionWeights))
        self.attention_layers = tuple(m.layer_idx for m in mixers if isinstance(m, AttentionWeights))
        self.linear_weights = {m.layer_idx: m for m in mixers if not isinstance(m, AttentionWeights)}
        self.device, self.dtype = self.embed.device, self.embed.dtype
        # experts routed through transformers' module with its "eager" implementation (data-dependent
        # shapes, a host synchronisation) cannot be captured or compiled whole: experts_capture_safe
        self.capture_safe = all(getattr(b.ffn, "capture_safe", True) for b in self.blocks)

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin [N, rot] at positions [N] (the model's own rotary module: partial and M-RoPE alike)."""
        if self.rotary is None:
            return None
        cos, sin = self.rotary(self.embed[:0], positions[None])
        return cos[0], sin[0]

    def _linear(self, w, x: torch.Tensor, context) -> torch.Tensor:
        raise NotImplementedError

    def _attention(self, w: AttentionWeights, x: torch.Tensor, rope, context) -> torch.Tensor:
        n = x.shape[0]
        bq, bk, bv, bo = w.biases
        q = F.linear(x, w.q, bq).view(n, self.heads, -1)
        gate = None
        if w.gated:
            q, gate = q[..., : self.head_dim], q[..., self.head_dim:]
        k = F.linear(x, w.k, bk).view(n, self.kv_heads, self.head_dim)
        if w.key_scale != 1.0:
            k = k * w.key_scale
        v = F.linear(x, w.v, bv).view(n, self.kv_heads, self.head_dim)
        if w.q_norm is not None:
            q, k = rms_norm(q, w.q_norm, self.eps), rms_norm(k, w.k_norm, self.eps)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        out = context.attend(w.index, q, k, v, w.scaling).reshape(n, -1)  # the context knows where the keys are
        if gate is not None:
            out = out * torch.sigmoid(gate.reshape(n, -1))
        return F.linear(out, w.o, bo)

    def _parallel(self, m: ParallelMixers, x: torch.Tensor, rope, context) -> torch.Tensor:
        scaled = lambda t, k: t * k if k != 1.0 else t  # noqa: E731
        linear = scaled(self._linear(m.linear, scaled(x, m.linear_in), context), m.linear_out)
        return linear + scaled(self._attention(m.attention, scaled(x, m.attention_in), rope, context), m.attention_out)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, context) -> torch.Tensor:
        """Hidden states [N, hidden] of new tokens `ids` [N] at `positions` [N] (before the final norm)."""
        h = F.embedding(ids, self.embed)
        if self.embed_scale != 1.0:
            h = h * self.embed_scale
        rope = self.rope(positions)
        for block in self.blocks:
            x = self.norm(h, block.input_norm, self.eps)
            if isinstance(block.mixer, AttentionWeights):
                out = self._attention(block.mixer, x, rope, context)
            elif isinstance(block.mixer, ParallelMixers):
                out = self._parallel(block.mixer, x, rope, context)
            else:
                out = self._linear(block.mixer, x, context)
            h = h + (out * self.residual_scale if self.residual_scale != 1.0 else out)
            out = block.ffn(self.norm(h, block.post_norm, self.eps))
            h = h + (out * self.residual_scale if self.residual_scale != 1.0 else out)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [vocab] fp32 after the last of `hidden` [N, hidden]."""
        logits = F.linear(self.norm(hidden[-1:], self.final_norm, self.eps), self.lm_head)[0].float()
        return logits / self.logits_scale if self.logits_scale != 1.0 else logits
