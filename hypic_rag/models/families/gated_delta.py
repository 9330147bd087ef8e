"""Gated DeltaNet and KDA (qwen3_5, qwen3_next, kimi_linear): a dense d_k x d_k operator per head,
read from one augmented call of the layer's own chunk function; its reference is the product of
per-token transitions read off the plain recurrent function.

Augmented-value trick: append d_k value columns with zero inputs and an identity initial state;
value columns evolve independently and linearly, so one call returns [E | M] in its final state
[B, H, d_k, d_v + d_k]. Inputs are [B, T, H, D] (transformers/fla layout).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from hypic_rag.models.families.base import MixerAdapter, RecurrenceForm, product_of_transitions
from hypic_rag.models.specs import MixerFamily
from hypic_rag.ops.capture import RecurrenceCall
from hypic_rag.ops.transition import InteriorTransition, slice_time

SEQUENCE_ARGS = ("query", "key", "value", "g", "beta")


def gated_delta_interior(call: RecurrenceCall, start: int) -> InteriorTransition:
    """[E | M] over tokens [start, T) from one augmented call of the layer's chunk function.

    Inputs are [B, T, H, D] (transformers/fla layout); the returned state is fp32.
    """
    args = call.arguments
    q, k, v, g, beta = (slice_time(args[name], start) for name in SEQUENCE_ARGS)
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


def gated_delta_operator_ref(call: RecurrenceCall, start: int, recurrent_fn) -> torch.Tensor:
    """M as the product of per-token transitions A_t, each read off the plain recurrent function run
    on one token with zero value input and an identity initial state. [B, H, d_k, d_k] fp32."""
    args = call.arguments
    q, k, v, g, beta = (args[n][:, start:] for n in SEQUENCE_ARGS)
    batch, steps, h_v, _ = v.shape
    d_k = k.shape[-1]
    zeros = v.new_zeros(batch, 1, h_v, d_k)
    l2 = args.get("use_qk_l2norm_in_kernel", False)

    def transition(t: int, eye: torch.Tensor) -> torch.Tensor:
        return recurrent_fn(q[:, t : t + 1], k[:, t : t + 1], zeros, g=g[:, t : t + 1], beta=beta[:, t : t + 1],
                            initial_state=eye, output_final_state=True, use_qk_l2norm_in_kernel=l2)[1]

    return product_of_transitions(batch, h_v, d_k, steps, v.device, transition)


GATED_DELTA = MixerAdapter(
    family=MixerFamily.GATED_DELTA,
    chunk_fn="torch_chunk_gated_delta_rule",
    recurrent_fn="torch_recurrent_gated_delta_rule",
    recurrence=RecurrenceForm(SEQUENCE_ARGS, "initial_state", "output_final_state"),
    interior=gated_delta_interior,
    operator_ref=gated_delta_operator_ref,
    step_seams_up_to=16,  # a seam is a few tokens: the step recurrence beats a 64-token chunk padded around it
    batched_runs=True,
)

# Kimi's KDA: the same recurrence form under other function names (per-channel gates in g)
KIMI_DELTA = replace(GATED_DELTA, chunk_fn="chunk_kimi_delta_attention", recurrent_fn="recurrent_kimi_delta_attention")
