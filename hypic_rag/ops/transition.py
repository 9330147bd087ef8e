"""Interior end state E and transition operator M of one linear layer over a token range.

For a layer whose state follows S_t = A_t S_{t-1} + B_t over tokens [start, T):
    E = state reached from S = 0,   M = A_{T-1} ... A_start,   so that S_T = M S_start + E.

Gated delta (GDN, KDA): the augmented-value trick. Append d_k value columns with zero inputs and an
identity initial state; value columns evolve independently and linearly, so one call of the model's
own chunk function returns [E | M] in its final state [B, H, d_k, d_v + d_k].
Mamba2: A_t = exp(dt_t * A_h) is a scalar per head, so M = exp(A_h * sum_t dt_t) (the gate product),
and E is the chunk scan's final state from a zero start over the same range.

The *_ref functions build M token by token from the plain recurrence and are what tests compare to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hypic_rag.ops.capture import RecurrenceCall


@dataclass(frozen=True)
class InteriorTransition:
    """E [B, H, d_k, d_v] (Mamba2: [B, H, head_dim, d_state]) and M: [B, H, d_k, d_k] dense or [B, H] scalar."""

    state: torch.Tensor
    operator: torch.Tensor


def _slice_time(x: torch.Tensor | None, start: int) -> torch.Tensor | None:
    return None if x is None else x[:, start:]


def gated_delta_interior(call: RecurrenceCall, start: int) -> InteriorTransition:
    """[E | M] over tokens [start, T) from one augmented call of the layer's chunk function.

    Inputs are [B, T, H, D] (transformers/fla layout); the returned state is fp32.
    """
    args = call.arguments
    q, k, v = (_slice_time(args[name], start) for name in ("query", "key", "value"))
    g, beta = _slice_time(args["g"], start), _slice_time(args["beta"], start)
    batch, _, h_v, d_v = v.shape
    d_k = k.shape[-1]
    v_aug = torch.cat([v, v.new_zeros(*v.shape[:-1], d_k)], dim=-1)
    init = torch.zeros(batch, h_v, d_k, d_v + d_k, dtype=torch.float32, device=v.device)
    init[..., d_v:] = torch.eye(d_k, dtype=torch.float32, device=v.device)
    _, final = call.fn(
        q,
        k,
        v_aug,
        g=g,
        beta=beta,
        initial_state=init,
        output_final_state=True,
        use_qk_l2norm_in_kernel=args.get("use_qk_l2norm_in_kernel", False),
    )
    final = final.float()
    return InteriorTransition(state=final[..., :d_v].contiguous(), operator=final[..., d_v:].contiguous())


def mamba2_processed_dt(args: dict, start: int) -> torch.Tensor:
    """dt exactly as the chunk scan uses it: softplus(dt + dt_bias), clamped to dt_limit. [B, T, H]."""
    dt = args["dt"][:, start:]
    if args.get("dt_bias") is not None:
        dt = dt + args["dt_bias"].to(dt.dtype)
    if args.get("dt_softplus", False):
        dt = F.softplus(dt)
    low, high = args.get("dt_limit", (0.0, float("inf")))
    return torch.clamp(dt, min=low, max=high)


def mamba2_interior(call: RecurrenceCall, start: int) -> InteriorTransition:
    """E from a zero-start chunk scan over [start, T); M = exp(A * sum dt), [B, H]."""
    args = dict(call.arguments)
    for name in ("hidden_states", "dt", "B", "C"):
        args[name] = args[name][:, start:]
    args["initial_states"] = None
    args["return_final_states"] = True
    kwargs = args.pop("kwargs", {}) or {}
    _, final = call.fn(**args, **kwargs)
    dt = mamba2_processed_dt(call.arguments, start).float()
    operator = torch.exp(call.arguments["A"].float() * dt.sum(dim=1))
    return InteriorTransition(state=final.float().contiguous(), operator=operator.contiguous())


def gated_delta_operator_ref(call: RecurrenceCall, start: int, recurrent_fn) -> torch.Tensor:
    """M as the product of per-token transitions A_t, each read off the plain recurrent function run
    on one token with zero value input and an identity initial state. [B, H, d_k, d_k] fp32."""
    args = call.arguments
    q, k, v, g, beta = (args[n][:, start:] for n in ("query", "key", "value", "g", "beta"))
    batch, steps, h_v, _ = v.shape
    d_k = k.shape[-1]
    eye = torch.eye(d_k, dtype=torch.float32, device=v.device).expand(batch, h_v, d_k, d_k).contiguous()
    product = eye.clone()
    zeros = v.new_zeros(batch, 1, h_v, d_k)
    for t in range(steps):
        _, a_t = recurrent_fn(
            q[:, t : t + 1],
            k[:, t : t + 1],
            zeros,
            g=g[:, t : t + 1],
            beta=beta[:, t : t + 1],
            initial_state=eye.clone(),
            output_final_state=True,
            use_qk_l2norm_in_kernel=args.get("use_qk_l2norm_in_kernel", False),
        )
        product = a_t.float() @ product
    return product


def mamba2_operator_ref(call: RecurrenceCall, start: int, recurrent_fn=None) -> torch.Tensor:
    """M as the running product of per-token decays exp(dt_t * A), [B, H] (no recurrent function
    needed: the decay is a scalar per head)."""
    dt = mamba2_processed_dt(call.arguments, start).float()
    a = call.arguments["A"].float()
    product = torch.ones(dt.shape[0], dt.shape[2], dtype=torch.float32, device=dt.device)
    for t in range(dt.shape[1]):
        product = product * torch.exp(dt[:, t] * a)
    return product
