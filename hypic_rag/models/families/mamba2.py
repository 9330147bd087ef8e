"""Mamba2 / SSD (falcon_h1, bamba, granitemoehybrid): A_t = exp(dt_t * A_h) is a scalar per head, so
M = exp(A_h * sum_t dt_t) (the gate product), and E is the chunk scan's final state from a zero start
over the same range; the reference multiplies the per-token decays one by one."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.capture import RecurrenceCall
from hypic_rag.ops.transition import InteriorTransition


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


def mamba2_operator_ref(call: RecurrenceCall, start: int, recurrent_fn=None) -> torch.Tensor:
    """M as the running product of per-token decays exp(dt_t * A), [B, H] (no recurrent function
    needed: the decay is a scalar per head)."""
    dt = mamba2_processed_dt(call.arguments, start).float()
    a = call.arguments["A"].float()
    product = torch.ones(dt.shape[0], dt.shape[2], dtype=torch.float32, device=dt.device)
    for t in range(dt.shape[1]):
        product = product * torch.exp(dt[:, t] * a)
    return product


@dataclass(frozen=True)
class Mamba2Adapter(MixerAdapter):
    def seam_settings(self, names: list[str], call_args: tuple, call_kwargs: dict, width: int) -> dict:
        """One chunk per seam instead of padding it to the model's chunk (256): the next power of two
        >= 16 (what the Triton kernels accept), capped by the model's."""
        at = names.index("chunk_size")
        model_chunk = int(call_kwargs.get("chunk_size", call_args[at] if len(call_args) > at else width))
        return {"chunk_size": min(model_chunk, max(16, 1 << (width - 1).bit_length()))}


MAMBA2 = Mamba2Adapter(
    family=MixerFamily.MAMBA2,
    chunk_fn="mamba2_chunk_scan",
    recurrent_fn=None,  # seams run the chunk scan (one chunk each); the decay is a scalar, no step form needed
    recurrence=RecurrenceForm(("0", "dt", "B", "C"), "initial_states", "return_final_states"),
    interior=mamba2_interior,
    operator_ref=mamba2_operator_ref,
)
