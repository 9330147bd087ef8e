"""Moving cached post-RoPE keys to another position.

RoPE is additive in angle: R(p + d) k = R(d) R(p) k, so a key cached at position p is moved to
p + d by one more rotation by d, with no access to the pre-RoPE key. cos/sin come from the model's
own rotary module (this covers partial rotary, M-RoPE with equal text positions and scaled
variants); its attention_scaling factor is divided out, because a shift must be a pure rotation.

Keys are [B, kv_heads, T, head_dim] with the rotated dims first (transformers' layout).
"""

from __future__ import annotations

import torch


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotation_for_shift(rotary_emb: torch.nn.Module, shift: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of the pure rotation by `shift` positions, [rotary_dim] fp32."""
    probe = torch.empty(0, dtype=torch.float32, device=device)
    position_ids = torch.tensor([[shift]], dtype=torch.long, device=device)
    cos, sin = rotary_emb(probe, position_ids)
    scaling = float(getattr(rotary_emb, "attention_scaling", 1.0) or 1.0)
    return cos.reshape(-1).float() / scaling, sin.reshape(-1).float() / scaling


def shift_keys(keys: torch.Tensor, rotary_emb: torch.nn.Module, shift: int) -> torch.Tensor:
    """Rotate post-RoPE keys [..., T, head_dim] by `shift` positions (negative shifts de-rotate)."""
    if shift == 0:
        return keys
    cos, sin = rotation_for_shift(rotary_emb, shift, keys.device)
    return _rotate(keys, cos, sin)


def shift_keys_per_token(keys: torch.Tensor, rotary_emb: torch.nn.Module, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate keys [..., T, head_dim] token t by shifts[t] positions: many segments, each with its own
    shift, moved by one rotation instead of one per segment."""
    position_ids = shifts.to(device=keys.device, dtype=torch.long)[None]
    cos, sin = rotary_emb(torch.empty(0, dtype=torch.float32, device=keys.device), position_ids)
    scaling = float(getattr(rotary_emb, "attention_scaling", 1.0) or 1.0)
    return _rotate(keys, cos.reshape(shifts.shape[0], -1).float() / scaling,
                   sin.reshape(shifts.shape[0], -1).float() / scaling)


def _rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """keys [..., T, head_dim] with cos/sin [rot] or [T, rot] over the leading rot dims."""
    rot = cos.shape[-1]
    k = keys.float()
    k_rot, k_pass = k[..., :rot], k[..., rot:]
    k_rot = k_rot * cos + _rotate_half(k_rot) * sin
    return torch.cat((k_rot, k_pass), dim=-1).to(keys.dtype)


def shift_keys_ref(keys: torch.Tensor, rotary_emb: torch.nn.Module, shift: int) -> torch.Tensor:
    """Reference: the same shift as an explicit 2x2 rotation per frequency pair, one token at a time."""
    rot = 2 * int(rotary_emb.inv_freq.numel())
    half = rot // 2
    inv_freq = rotary_emb.inv_freq.double()
    out = keys.double().clone()
    angle = shift * inv_freq  # [half]
    c, s = torch.cos(angle), torch.sin(angle)
    for t in range(keys.shape[-2]):
        x1 = out[..., t, :half].clone()
        x2 = out[..., t, half:rot].clone()
        out[..., t, :half] = x1 * c - x2 * s
        out[..., t, half:rot] = x2 * c + x1 * s
    return out.to(keys.dtype)
