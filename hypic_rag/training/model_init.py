"""How the small Qwen3.5-style hybrid of hypic_rag.training starts: its config, and the attention
initialisations that let a fresh model leave the chance plateau (sharpened q/k gains, copy_init) or an
older checkpoint leave a stuck copy circuit (reset_attention)."""

from __future__ import annotations

import torch

from hypic_rag.models.tiny import qwen3_5_style_config


def build_model(tokenizer, hidden: int, layers: int, attention_gain: float = 1.5, copy_strength: float = 0.0):
    from transformers import AutoModelForCausalLM

    config = qwen3_5_style_config(len(tokenizer), hidden, layers, bos=tokenizer.bos_token_id,
                                  eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    start_attention(model, attention_gain, copy_strength)
    return model


def start_attention(model, attention_gain: float = 1.5, copy_strength: float = 0.0) -> None:
    """How freshly initialised attention starts, in a new model or after reset_attention."""
    sharpen_attention(model, attention_gain)
    if copy_strength:
        copy_init(model, copy_strength)


@torch.no_grad()
def sharpen_attention(model, extra_gain: float = 1.5) -> None:
    """Start the per-head q/k RMSNorm gains at 1 + extra_gain instead of 1.

    With QK-norm and head_dim 32 the attention logits are bounded near sqrt(32) while the gains are
    ~1: too flat to pick one token out of hundreds, and the model stalls answering with the most
    frequent value (seen in training: EM stuck at chance until the gains were raised, then rising
    within 300 steps). Qwen3.5's RMSNorm scales by (1 + weight)."""
    for layer in model.model.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "q_norm"):
            attn.q_norm.weight += extra_gain
            attn.k_norm.weight += extra_gain


@torch.no_grad()
def copy_init(model, strength: float) -> None:
    """Start each attention head's output projection as the transpose of its value projection.

    Head h then writes back (a projection of) the token it attends to: OV_h = s * V_g^T V_g is positive
    semi-definite, so attending to the answer token already raises that token's logit through the tied
    embeddings. Without it the copy circuit has a chicken-and-egg start (attention to the value pays off
    only once OV copies, and OV learns to copy only once attention finds the value), and fresh models sat
    at chance for 1,000+ steps. s is set so that one attended token's copy has `strength` times the norm
    of a token embedding."""
    for layer in model.model.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None:
            continue
        d, rep = attn.head_dim, attn.num_key_value_groups
        v = attn.v_proj.weight  # [kv_heads * d, hidden]
        for h in range(model.config.num_attention_heads):
            g = h // rep
            attn.o_proj.weight[:, h * d:(h + 1) * d] = v[g * d:(g + 1) * d].T
        x = torch.randn(256, v.shape[1], device=v.device)  # RMS-normalised inputs, as after input_layernorm
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt()
        heads = attn.v_proj(x).view(len(x), -1, d).repeat_interleave(rep, dim=1).flatten(1)
        out = attn.o_proj(heads * 0.5)  # the output gate starts near sigmoid(0)
        target = model.config.initializer_range * v.shape[1] ** 0.5
        attn.o_proj.weight *= strength * target / out.norm(dim=-1).mean()


@torch.no_grad()
def reset_attention(model, seed: int, attention_gain: float = 1.5, copy_strength: float = 0.0) -> None:
    """Re-initialise every full-attention layer (q/k/v/o projections, q/k norm gains), then start_attention.

    Used to leave a stage's stuck copy circuit behind while keeping the Gated DeltaNet layers, MLPs and
    embeddings: stage 9's first attention layer copied city, colour and food values but never attended
    to a job value, and neither 600 more steps nor re-initialising its q/k alone changed that; with the
    whole attention re-initialised the job copy formed within 600 steps (stage 10)."""
    torch.manual_seed(seed)
    for layer in model.model.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is not None:
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
                proj.weight.normal_(0.0, model.config.initializer_range)
            attn.q_norm.weight.zero_()
            attn.k_norm.weight.zero_()
    start_attention(model, attention_gain, copy_strength)
