"""A lean forward over a transformers-loaded Qwen3.5 hybrid (Gated DeltaNet + gated full attention).

transformers' eager forward spends most of a small request in Python and per-module glue: cache
objects, mask builders, kernel-hub dispatch, one forward per module. This one reads the same
parameters (no second copy of the weights: only the RMSNorms' 1 + w and -exp(A_log), a few
hundred floats per layer, are precomputed) and runs the layer stack as a flat sequence of tensor
ops over the request's new tokens. What differs between a plain prefill, a decode step and a
hypic request is only how attention finds its keys and how each linear layer's conv and
recurrence continue from their state; that is the `context` handed to `forward` (runtime/contexts.py
for plain continuation, runtime/seam_chain.py for every seam of a request at once).

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

LEAN_MODEL_TYPES = ("qwen3_5_text",)


@dataclass(frozen=True)
class LinearWeights:
    layer_idx: int
    qkv: torch.Tensor
    z: torch.Tensor
    b: torch.Tensor
    a: torch.Tensor
    conv: torch.Tensor  # [C, 1, K]
    neg_a: torch.Tensor  # -exp(A_log), fp32 [H]
    dt_bias: torch.Tensor
    norm: torch.Tensor
    norm_eps: float
    out: torch.Tensor


@dataclass(frozen=True)
class AttentionWeights:
    layer_idx: int
    index: int  # among the attention layers
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_norm: torch.Tensor  # 1 + w
    k_norm: torch.Tensor


@dataclass(frozen=True)
class Block:
    mixer: LinearWeights | AttentionWeights
    input_norm: torch.Tensor  # 1 + w
    post_norm: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor


def _one_plus(norm: torch.nn.Module) -> torch.Tensor:
    return (1.0 + norm.weight.detach().float())


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3.5's zero-centred RMSNorm: (x / rms(x)) * (1 + w), in fp32, back to x's dtype."""
    h = x.float()
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * scale).type_as(x)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (h * F.silu(gate.float())).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on the leading cos.shape[-1] dims of x [..., N, heads, D] with cos/sin [N, rot]."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


class LeanQwen3_5:
    """The parameters of a Qwen3_5ForCausalLM, and its forward over new tokens given a context."""

    def __init__(self, model: torch.nn.Module):
        config = model.config.get_text_config(decoder=True)
        if config.model_type not in LEAN_MODEL_TYPES:
            raise UnsupportedModelError(
                f"the lean runtime covers {', '.join(LEAN_MODEL_TYPES)}; {config.model_type} runs on the "
                "transformers path")
        inner = model.model
        self.model = model
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
        blocks, attention_index = [], 0
        for idx, layer in enumerate(inner.layers):
            if config.layer_types[idx] == "linear_attention":
                m = layer.linear_attn
                mixer = LinearWeights(idx, m.in_proj_qkv.weight, m.in_proj_z.weight, m.in_proj_b.weight,
                                      m.in_proj_a.weight, m.conv1d.weight, -m.A_log.detach().float().exp(),
                                      m.dt_bias, m.norm.weight, float(m.norm.variance_epsilon), m.out_proj.weight)
            else:
                m = layer.self_attn
                mixer = AttentionWeights(idx, attention_index, m.q_proj.weight, m.k_proj.weight, m.v_proj.weight,
                                         m.o_proj.weight, _one_plus(m.q_norm), _one_plus(m.k_norm))
                attention_index += 1
            blocks.append(Block(mixer, _one_plus(layer.input_layernorm), _one_plus(layer.post_attention_layernorm),
                                layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight))
        self.blocks = tuple(blocks)
        self.linear_layers = tuple(b.mixer.layer_idx for b in blocks if isinstance(b.mixer, LinearWeights))
        self.attention_layers = tuple(b.mixer.layer_idx for b in blocks if isinstance(b.mixer, AttentionWeights))
        module = sys.modules[type(inner.layers[self.linear_layers[0]].linear_attn).__module__]
        with SWAP_LOCK:  # the originals, never a swap in progress
            self.chunk_fn = getattr(module, GATED_DELTA.chunk_fn)
            self.step_fn = getattr(module, GATED_DELTA.recurrent_fn)
        self.step_up_to = 1  # the step function for a decode token; the chunk function for any run of several
        self.device, self.dtype = self.embed.device, self.embed.dtype

    # ----------------------------------------------------------------------------- pieces
    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, rot] at positions [N] (the model's own rotary module: partial and M-RoPE alike)."""
        cos, sin = self.rotary(self.embed[:0], positions[None])
        return cos[0], sin[0]

    def recurrence(self, q, k, v, g, beta, initial_state, steps: int):
        """The gated delta rule over [B, T, H, D] inputs from `initial_state`; (outputs, final state)."""
        fn = self.step_fn if steps <= self.step_up_to else self.chunk_fn
        return fn(q, k, v, g=g, beta=beta, initial_state=initial_state, output_final_state=True,
                  use_qk_l2norm_in_kernel=True)

    def _linear(self, w: LinearWeights, x: torch.Tensor, context) -> torch.Tensor:
        n = x.shape[0]
        mixed = context.conv(w, F.linear(x, w.qkv))  # after the causal conv and SiLU, in the context's layout
        q, k, v = torch.split(mixed, [self.key_heads * self.key_dim] * 2 + [self.value_heads * self.value_dim], -1)
        rows = mixed.shape[0]
        q = q.view(rows, self.key_heads, self.key_dim)
        k = k.view(rows, self.key_heads, self.key_dim)
        v = v.view(rows, self.value_heads, self.value_dim)
        beta = torch.sigmoid(F.linear(x, w.b))
        g = w.neg_a * F.softplus(F.linear(x, w.a).float() + w.dt_bias)
        out = context.recur(w, q, k, v, g, beta)  # [N, Hv, dv] (g, beta: [N, Hv] per token)
        z = F.linear(x, w.z).view(n, self.value_heads, self.value_dim)
        out = gated_rms_norm(out, z, w.norm, w.norm_eps).reshape(n, -1)
        return F.linear(out, w.out)

    def _attention(self, w: AttentionWeights, x: torch.Tensor, cos, sin, context) -> torch.Tensor:
        n = x.shape[0]
        qg = F.linear(x, w.q).view(n, self.heads, 2 * self.head_dim)
        q, gate = qg[..., : self.head_dim], qg[..., self.head_dim:]
        q = rotate(rms_norm(q, w.q_norm, self.eps), cos, sin)
        k = rotate(rms_norm(F.linear(x, w.k).view(n, self.kv_heads, self.head_dim), w.k_norm, self.eps), cos, sin)
        v = F.linear(x, w.v).view(n, self.kv_heads, self.head_dim)
        keys, values, mask = context.attend(w.index, k, v)  # [kv_heads, T, D] each, mask [N, T] or None
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], keys[None], values[None], attn_mask=mask,
                                             scale=self.head_dim ** -0.5, enable_gqa=self.heads != self.kv_heads)
        out = out[0].transpose(0, 1).reshape(n, -1) * torch.sigmoid(gate.reshape(n, -1))
        return F.linear(out, w.o)

    # ----------------------------------------------------------------------------- forward
    @torch.no_grad()
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, context) -> torch.Tensor:
        """Hidden states [N, hidden] of new tokens `ids` [N] at `positions` [N] (before the final norm)."""
        h = F.embedding(ids, self.embed)
        cos, sin = self.rope(positions)
        for block in self.blocks:
            x = rms_norm(h, block.input_norm, self.eps)
            if isinstance(block.mixer, LinearWeights):
                h = h + self._linear(block.mixer, x, context)
            else:
                h = h + self._attention(block.mixer, x, cos, sin, context)
            x = rms_norm(h, block.post_norm, self.eps)
            h = h + F.linear(F.silu(F.linear(x, block.gate)) * F.linear(x, block.up), block.down)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits [vocab] fp32 after the last of `hidden` [N, hidden]."""
        return F.linear(rms_norm(hidden[-1:], self.final_norm, self.eps), self.lm_head)[0].float()
