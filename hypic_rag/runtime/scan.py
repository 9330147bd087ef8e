"""Prefix compositions of affine maps S -> P S + Q: the chain every hypic request and prefix-cache
request walks through its runs, in ceil(log2 J) batched steps (a Kogge-Stone scan), beside the
plain sequential reference the tests compare it with.

On a CUDA device the chain's fp32 matrix products run on TF32 tensor cores (`tensor_core_fp32`):
measured on an H200 (bench/results/graph_replay_probe_profile.txt), the same products as fp32 SIMT
GEMMs were 39% of a replayed 8-segment request. fla's chunk kernels, which produce every cached E
and M, already multiply in TF32, so this adds error of the size the entries carry.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def tensor_core_fp32(device: torch.device) -> Iterator[None]:
    """fp32 matmuls on `device` may use TF32 tensor cores inside the block (CUDA only; the CPU path
    is unchanged). The setting is process-wide while the block runs, as torch has no per-call one,
    and is restored after it. Inside a function being compiled it does nothing (dynamo cannot
    trace the setting): runtime/compiled.py scopes TF32 around the whole compiled call instead."""
    if device.type != "cuda" or torch.compiler.is_compiling():
        yield
        return
    matmul = torch.backends.cuda.matmul
    name, fast = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)  # the new API where torch has it: mixing the two makes torch raise
    setattr(matmul, name, fast)
    try:
        yield
    finally:
        setattr(matmul, name, before)


def affine_prefix(p: torch.Tensor, q: torch.Tensor, min_steps: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive prefix compositions of maps f_j(S) = p_j S + q_j: F_j = f_j o ... o f_0, as (P, Q)
    with F_j(S) = P_j S + Q_j. p [J, H, d, d], q [J, H, d, e].

    Kogge-Stone over J maps: step s composes each map with the one 2**s before it (identity before
    the first). ceil(log2 J) steps run, or `min_steps` if more (a step reaching past the first map
    composes with the identity: the same result, the same ops); a request's bucket pads J, so one
    bucket is one shape. Each map is kept as one [P | Q] matrix over J * H: f o g = [P_f P_g | P_f Q_g
    + Q_f], a step one batched matmul into a fresh tensor over the maps past the first 2**step, Q_f
    added in place, the first rows copied (no padded or concatenated copy of every map each step: on
    an H200 those copies were 19% of a replayed 8-segment request)."""
    j, h, d, e = q.shape
    steps = max(max(j - 1, 0).bit_length(), min_steps)
    maps = torch.cat([p, q], dim=-1).reshape(j * h, d, d + e)  # [P | Q] per map and head
    for step in range(steps):  # fp32 products: the callers scope TF32 on CUDA (tensor_core_fp32)
        rows = min(1 << step, j) * h  # maps before the first 2**step compose with the identity: unchanged
        new = torch.empty_like(maps)
        new[:rows] = maps[:rows]
        torch.bmm(maps[rows:, :, :d], maps[: j * h - rows], out=new[rows:])  # [P_f P_g | P_f Q_g]
        new[rows:, :, d:] += maps[rows:, :, d:]  # + Q_f
        maps = new
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
