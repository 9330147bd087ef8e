"""A lean forward over a transformers-loaded Qwen3-Next hybrid: Qwen3.5's layer stack (runtime/qwen3_5.py:
Gated DeltaNet and gated full attention, zero-centred norms) with two differences.

- The Gated DeltaNet projections are fused per key-head group: in_proj_qkvz gives, for each of the
  H_k groups, [q | k | v of its H_v / H_k value heads | z of them], and in_proj_ba gives [b | a]
  per group. The conv reads [all q | all k | all v], so the projections' outputs (not the weights:
  no second copy of them) are regrouped into that order, as transformers' fix_query_key_value_ordering
  does.
- The MLP is a sparse mixture of experts (top-k routing, a sigmoid-gated shared expert) in the
  layers transformers makes sparse, a gated MLP in the others. The experts run through transformers'
  own module, as Granite's do in runtime/mamba2_hybrid.py: with its default grouped_mm
  implementation their shapes are static and nothing synchronises, so requests are captured and
  compiled as for dense models; with "eager" they are not (lean_model.experts_capture_safe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hypic_rag.runtime.lean_model import GatedMLP, experts_capture_safe
from hypic_rag.runtime.qwen3_5 import LeanQwen3_5, LinearWeights, gated_rms_norm
from hypic_rag.runtime.recurrences import GatedDeltaRecurrence

MODEL_TYPES = ("qwen3_next",)


class SparseMoe:
    """transformers' sparse MoE block over tokens [N, hidden] (it takes [batch, N, hidden])."""

    @property
    def capture_safe(self) -> bool:
        return experts_capture_safe(self.module)

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x[None])
        return (out[0] if isinstance(out, tuple) else out)[0]


class LeanQwen3Next(LeanQwen3_5):
    """The parameters of a Qwen3NextForCausalLM, and its grouped Gated DeltaNet projections."""

    model_types = MODEL_TYPES
    family = "Qwen3-Next"

    @staticmethod
    def _linear_weights(idx: int, m: torch.nn.Module, recurrence: GatedDeltaRecurrence) -> LinearWeights:
        return LinearWeights.of(idx, m, ("in_proj_qkvz", "in_proj_ba"), recurrence)

    @staticmethod
    def _mlp(mlp: torch.nn.Module):
        if hasattr(mlp, "experts"):
            return SparseMoe(mlp)
        return GatedMLP(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)

    def _linear(self, w: LinearWeights, x: torch.Tensor, context) -> torch.Tensor:
        n, hk, hv, dk, dv = x.shape[0], self.key_heads, self.value_heads, self.key_dim, self.value_dim
        r = hv // hk
        qkvz, ba = w.projections  # fused per key-head group
        q, k, v, z = torch.split(F.linear(x, qkvz).view(n, hk, 2 * dk + 2 * r * dv), [dk, dk, r * dv, r * dv], -1)
        b, a = torch.split(F.linear(x, ba).view(n, hk, 2 * r), [r, r], -1)
        grouped = torch.cat([q.reshape(n, -1), k.reshape(n, -1), v.reshape(n, -1)], -1)  # the conv's channel order
        mixed = context.conv(w, grouped)  # after the causal conv and SiLU, in the context's layout
        rows = mixed.shape[0]
        q, k, v = torch.split(mixed, [hk * dk, hk * dk, hv * dv], -1)
        q, k, v = q.view(rows, hk, dk), k.view(rows, hk, dk), v.view(rows, hv, dv)
        beta = torch.sigmoid(b.reshape(n, hv))
        g = w.neg_a * F.softplus(a.reshape(n, hv).float() + w.dt_bias)
        out = context.recur(w, (q, k, v, g, beta))  # [N, H_v, d_v]
        out = gated_rms_norm(out, z.reshape(n, hv, dv), w.norm, w.norm_eps).reshape(n, -1)
        return F.linear(out, w.out)
