"""Prefix compositions of affine maps S -> P S + Q: the chain every hypic request and prefix-cache
request walks through its runs, in a fixed number of batched steps (a Kogge-Stone scan), beside the
plain sequential reference the tests compare it with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCAN_STEPS = 5  # every request up to 2**5 = 32 segments scans with the same ops (one CUDA graph shape)


def affine_prefix(p: torch.Tensor, q: torch.Tensor, min_steps: int = SCAN_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive prefix compositions of maps f_j(S) = p_j S + q_j: F_j = f_j o ... o f_0, as (P, Q)
    with F_j(S) = P_j S + Q_j. p [J, H, d, d], q [J, H, d, e].

    Kogge-Stone over J maps: step s composes each map with the one 2**s before it (identity before
    the first). At least `min_steps` steps run (a step reaching past the first map composes with
    the identity: the same result, the same ops), so every J up to 2**min_steps dispatches the same
    ops. Each map is kept as one [P | Q] matrix over J * H: f o g = [P_f P_g | P_f Q_g + Q_f], one
    batched matmul-add and one concatenation a step."""
    j, h, d, e = q.shape
    steps = max(max(j - 1, 0).bit_length(), min_steps)
    maps = torch.cat([p, q], dim=-1).reshape(j * h, d, d + e)
    identity = torch.cat([torch.eye(d, dtype=p.dtype, device=p.device), p.new_zeros(d, e)], dim=-1)
    identity = identity.expand(j * h, d, d + e)
    for step in range(steps):
        rows = min(1 << step, j) * h
        earlier = torch.cat([identity[:rows], maps[: j * h - rows]])
        maps = torch.baddbmm(F.pad(maps[..., d:], (d, 0)), maps[..., :d], earlier)
    maps = maps.view(j, h, d, d + e)
    return maps[..., :d], maps[..., d:]


def affine_prefix_ref(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the same compositions one map after another."""
    ps, qs = [p[0]], [q[0]]
    for j in range(1, p.shape[0]):
        ps.append(p[j] @ ps[-1])
        qs.append(p[j] @ qs[-1] + q[j])
    return torch.stack(ps), torch.stack(qs)


def scalar_prefix(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """affine_prefix for scalar maps (p [J, H, 1, 1], Mamba2's decays) in closed form:
    P_j = prod_{i<=j} p_i and Q_j = sum_{i<=j} (prod_{i<k<=j} p_k) q_i, from the running sum of
    log p in fp64 (a difference of two long sums keeps its precision; J x J x H numbers). p is a
    decay in [0, 1], clamped at 1e-30, below which every product it enters is 0 in fp32 anyway."""
    log_p = torch.log(p[..., 0, 0].double().clamp_min(1e-30)).cumsum(0)  # [J, H]
    j = p.shape[0]
    later = torch.ones(j, j, dtype=torch.bool, device=p.device).triu(1)[..., None]  # i > j: no contribution
    weights = torch.exp((log_p[:, None] - log_p[None]).masked_fill(later, float("-inf"))).to(q.dtype)  # [j, i, H]
    return torch.exp(log_p).to(p.dtype)[..., None, None], torch.einsum("jih,ihe->jhe", weights, q[..., 0, :])[..., None, :]
