"""The linear recurrences of the lean runtime, one class per family, behind one interface.

A context (runtime/contexts.py, seam_chain.py, prefix_runs.py, segment_runs.py) never looks inside
a state: it asks the family's recurrence to

  continue_from(inputs, start, steps)  -> outputs [N, H, d_v], final state       (a plain forward)
  runs(inputs, slots, valid, R, W)     -> aux, maps [R, H, d, e + d]              (R runs at once)
  outputs(aux, starts, rows, dtype)    -> outputs [N, H, d_v] given each run's start

where every state is handled as a matrix S [H, d, e] and a run as the affine map S -> A S + B,
returned as [B | A] (`maps`): the chain composes these by matrix products whatever the family.

  Gated DeltaNet: S is [H, d_k, d_v], A a dense d_k x d_k matrix; one call of the chunk function
    from the augmented start [0 | I] returns [B | A] and, per token, q^T A_<=t for the correction.
  Mamba2 / SSD: S is [H, P, N] (head dim x state size), seen as [H, 1, P * N]; A is the scalar
    decay exp(A_h * sum dt) of the run, and the correction of token t is
    exp(A_h * cumsum dt_t) * (S_start C_t).

Padded slots of a run (valid = 0) have zero decay and zero write strength, so they leave a state
as it is. On a CUDA device with fla installed the Mamba2 scan runs as fla's simple-GLA kernel
(q = C, k = B, v = x * dt, g = A * dt, scale 1); elsewhere it is transformers' plain-torch chunk scan.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hypic_rag.runtime import kernel_ops
from hypic_rag.runtime.scan import affine_prefix, scalar_prefix


def _expand_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., G, N] -> [..., H, N]: each group serves heads // G consecutive heads."""
    groups = t.shape[-2]
    return t if groups == heads else t.repeat_interleave(heads // groups, dim=-2)


class GatedDeltaRecurrence:
    prefix = staticmethod(affine_prefix)
    per_token = (3, 4)  # g and beta come one row per new token; q, k, v in the context's layout

    """The gated delta rule. inputs = (q, k, v, g, beta): q, k, v per row of the context's layout
    ([rows, H, D]), g and beta per new token ([N, H])."""

    def __init__(self, chunk_fn, step_fn, recurrent_up_to: int = 1):
        self.chunk_fn, self.step_fn = kernel_ops.Kernel(chunk_fn), kernel_ops.Kernel(step_fn)
        # runs of at most this many tokens go to the step function (fla's fused recurrent kernel on
        # CUDA: one pass over the tokens, where the chunk kernel pads every run to a 64-token chunk);
        # 1: only decode steps. bench/cuda_graph_ttft.py times both kernels at the seam pass's shape.
        self.recurrent_up_to = recurrent_up_to
        self._starts: dict[tuple, torch.Tensor] = {}  # [0 | I] by shape: built once, read by every layer

    def _identity_start(self, runs: int, heads: int, d_k: int, d_v: int, device) -> torch.Tensor:
        """[0 | I] per run, fp32 (the recurrence reads it, never writes it)."""
        key = (runs, heads, d_k, d_v, str(device))
        if key not in self._starts:
            eye = torch.eye(d_k, dtype=torch.float32, device=device)
            self._starts[key] = torch.cat([torch.zeros(runs, heads, d_k, d_v, device=device),
                                           eye.expand(runs, heads, d_k, d_k)], -1)
        return self._starts[key]

    def call(self, q, k, v, g, beta, initial_state, steps: int):
        """[B, T, H, D] inputs from `initial_state`; (outputs, final state). The step function for a
        decode token (and runs up to `recurrent_up_to` tokens), the chunk function for longer runs."""
        fn = self.step_fn if steps <= self.recurrent_up_to else self.chunk_fn
        return kernel_ops.gated_delta_rule(fn, q, k, v, g, beta, initial_state)

    def continue_from(self, inputs, start: torch.Tensor | None, steps: int):
        q, k, v, g, beta = inputs
        out, final = self.call(q[None], k[None], v[None], g[None], beta[None],
                               None if start is None else start[None], steps)
        return out[0], final[0]

    def runs(self, inputs, slots, valid, runs: int, width: int):
        q, k, v, g, beta = inputs
        d_k, d_v, heads = k.shape[-1], v.shape[-1], v.shape[-2]
        g = g.index_select(0, slots) * valid
        beta = beta.index_select(0, slots) * valid.to(beta.dtype)
        v = F.pad(v, (0, d_k))  # [v | 0]: the appended columns carry the start's identity block
        start = self._identity_start(runs, heads, d_k, d_v, v.device)
        out, final = self.call(*(t.view(runs, width, *t.shape[1:]) for t in (q, k, v, g, beta)), start, width)
        return (out, d_v), final.float()

    def outputs(self, aux, starts: torch.Tensor, rows: torch.Tensor, dtype) -> torch.Tensor:
        """o_t = o0_t + (q_t^T A_<=t) S_start (the recurrence is linear in its start)."""
        out, d_v = aux
        out = out[..., :d_v].float() + torch.matmul(out[..., d_v:].float().transpose(1, 2), starts).transpose(1, 2)
        return out.reshape(-1, *out.shape[2:]).index_select(0, rows).to(dtype)

    @staticmethod
    def matrix(state: torch.Tensor) -> torch.Tensor:
        """A state (or an entry's E) as the chain's matrix: the dense [H, d_k, d_v] itself, fp32."""
        return state.float()

    @staticmethod
    def native(matrix: torch.Tensor) -> torch.Tensor:
        return matrix

    entry_operator = matrix  # an entry's M is already the [H, d_k, d_k] transition
    operator_native = native


class Mamba2Recurrence:
    """Mamba2's SSD scan. inputs = (x, dt, B, C): x [rows, H, P], B and C [rows, G, N] per row of the
    context's layout, dt [N, H] per new token, already softplus'd and clamped (fp32)."""

    def __init__(self, a: torch.Tensor, skip: torch.Tensor, head_dim: int, chunk_scan, model_chunk: int):
        self.a = a  # -exp(A_log), fp32 [H]
        self.skip = skip[:, None]  # D, fp32 [H, 1]
        self.head_dim = head_dim
        self.chunk_scan = kernel_ops.Kernel(chunk_scan)
        self.model_chunk = model_chunk
        fla = _fla_simple_gla() if a.device.type == "cuda" else None
        self.fla = None if fla is None else kernel_ops.Kernel(fla)

    def scan(self, x, dt, b, c, start: torch.Tensor | None):
        """x [R, T, H, P], dt [R, T, H], b/c [R, T, G, N] from `start` [R, H, P, N] (None: zero):
        (outputs with the D skip [R, T, H, P], final state), both fp32 as transformers keeps them."""
        heads, steps = x.shape[2], x.shape[1]
        if steps == 1:  # a decode step: the recurrence itself
            s = torch.zeros(x.shape[0], heads, x.shape[3], b.shape[-1], device=x.device) if start is None \
                else start.float()
            bh, ch = _expand_groups(b[:, 0], heads).float(), _expand_groups(c[:, 0], heads).float()
            s = s * torch.exp(dt[:, 0] * self.a)[..., None, None] + \
                (x[:, 0].float() * dt[:, 0, :, None])[..., None] * bh[:, :, None, :]
            return (torch.einsum("rhpn,rhn->rhp", s, ch) + x[:, 0].float() * self.skip)[:, None], s
        if self.fla is not None:
            out, final = kernel_ops.simple_gla(self.fla, _expand_groups(c, heads), _expand_groups(b, heads),
                                               (x.float() * dt[..., None]).to(x.dtype), dt * self.a,
                                               None if start is None else start.float().transpose(-1, -2))
            return out.float() + x.float() * self.skip, final.float().transpose(-1, -2)
        chunk = min(self.model_chunk, max(16, 1 << (steps - 1).bit_length()))
        return kernel_ops.mamba2_chunk_scan(self.chunk_scan, x, dt, self.a, b, c, chunk, self.skip[:, 0], start)

    def continue_from(self, inputs, start: torch.Tensor | None, steps: int):
        x, dt, b, c = inputs
        out, final = self.scan(x[None], dt[None], b[None], c[None], None if start is None else start[None])
        return out[0], final[0]

    def runs(self, inputs, slots, valid, runs: int, width: int):
        x, dt, b, c = inputs
        heads, p, n = x.shape[1], x.shape[2], b.shape[-1]
        dt = (dt.index_select(0, slots) * valid).view(runs, width, heads)
        view = lambda t: t.view(runs, width, *t.shape[1:])  # noqa: E731
        out, final = self.scan(view(x), dt, view(b), view(c), None)
        log_decay = torch.cumsum(dt.float() * self.a, dim=1)  # [R, W, H] up to and including each token
        maps = torch.cat([final.reshape(runs, heads, 1, p * n), torch.exp(log_decay[:, -1])[..., None, None]], -1)
        return (out, log_decay, view(c)), maps

    def outputs(self, aux, starts: torch.Tensor, rows: torch.Tensor, dtype) -> torch.Tensor:
        out, log_decay, c = aux
        runs, width, heads, p = out.shape
        groups = c.shape[2]
        s = starts.view(runs, groups, heads // groups, p, -1)  # each group's heads read the group's C
        seen = torch.einsum("rwgn,rgkpn->rwgkp", c.float(), s).reshape(runs, width, heads, p)
        out = torch.addcmul(out, torch.exp(log_decay)[..., None], seen)
        return out.reshape(-1, heads, p).index_select(0, rows)  # fp32, as the chunk scan returns it

    prefix = staticmethod(scalar_prefix)
    per_token = (1,)  # dt

    @staticmethod
    def matrix(state: torch.Tensor) -> torch.Tensor:
        return state.float().reshape(*state.shape[:-2], 1, -1)

    def native(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.reshape(*matrix.shape[:-2], self.head_dim, -1)

    @staticmethod
    def entry_operator(operator: torch.Tensor) -> torch.Tensor:
        return operator.float()[..., None, None]

    @staticmethod
    def operator_native(matrix: torch.Tensor) -> torch.Tensor:
        return matrix[..., 0, 0]


def _fla_simple_gla():
    """fla's chunked simple-GLA kernel, or None where fla is not installed."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except Exception:  # noqa: BLE001  (fla absent, or blocked on a CPU-only machine)
        return None
    return chunk_simple_gla
