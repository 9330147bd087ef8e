"""The recurrence kernels as leaves of a compiled graph (runtime/compiled.py).

A compiled forward (torch.compile with inductor) fuses the many small ops around each recurrence
(norms, gates, casts, the conv, softplus and sigmoid) into a few kernels. The recurrences themselves
are fla's Triton kernels on CUDA, launched from Python wrappers (autotuning, contiguity checks,
chunk indices memoised by tensor identity) that dynamo should not trace into. So, while a forward is
being compiled, each recurrence call goes through a custom op: one opaque node of the graph whose
output shapes and dtypes a fake implementation states, and which calls the very function the
eager path calls (fla's kernel on CUDA, transformers' plain-torch reference on CPU, so the CPU
tests exercise the op the GPU runs). Eagerly (`torch.compiler.is_compiling()` is False) the
function is called directly, so the eager path and its dispatch counts are unchanged.

The op's real implementation casts its outputs to the dtypes the fake one states (the output in
the inputs' dtype, the final state in fp32), so the two never disagree, whichever kernel runs.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

_kernels: list[Callable] = []  # the functions the ops call, by key
_keys: dict[int, int] = {}  # id(function) -> its key
_lock = threading.Lock()


class Kernel:
    """A recurrence function and the key its op calls it by (registered here, when a lean model is
    built: never inside a compiled region, which could not take the lock)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        with _lock:
            if id(fn) not in _keys:
                _keys[id(fn)] = len(_kernels)
                _kernels.append(fn)  # kept for the process's life: module-level functions
            self.key = _keys[id(fn)]


@torch.library.custom_op("hypic_rag::gated_delta_rule", mutates_args=())
def gated_delta_rule_op(kernel: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                        beta: torch.Tensor, initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = _kernels[kernel](q, k, v, g=g, beta=beta, initial_state=initial_state, output_final_state=True,
                                  use_qk_l2norm_in_kernel=True)
    return out.to(v.dtype).contiguous(), final.float().contiguous()


@gated_delta_rule_op.register_fake
def _(kernel, q, k, v, g, beta, initial_state):
    batch, steps, heads, d_v = v.shape
    return v.new_empty(batch, steps, heads, d_v), v.new_empty(batch, heads, k.shape[-1], d_v, dtype=torch.float32)


def gated_delta_rule(kernel: Kernel, q, k, v, g, beta, initial_state):
    """The kernel (a chunk or step function of the gated delta rule, fla's or transformers') over
    [B, T, H, D] inputs from `initial_state`, L2-normalising q and k in the kernel: (outputs, final state)."""
    if not torch.compiler.is_compiling():
        return kernel.fn(q, k, v, g=g, beta=beta, initial_state=initial_state, output_final_state=True,
                         use_qk_l2norm_in_kernel=True)
    return gated_delta_rule_op(kernel.key, q, k, v, g, beta, initial_state)


@torch.library.custom_op("hypic_rag::simple_gla", mutates_args=())
def simple_gla_op(kernel: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
                  initial_state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = _kernels[kernel](q=q, k=k, v=v, g=g, scale=1.0, initial_state=initial_state, output_final_state=True)
    return out.to(v.dtype).contiguous(), final.float().contiguous()


@simple_gla_op.register_fake
def _(kernel, q, k, v, g, initial_state):
    batch, steps, heads, d_v = v.shape
    return v.new_empty(batch, steps, heads, d_v), v.new_empty(batch, heads, k.shape[-1], d_v, dtype=torch.float32)


def simple_gla(kernel: Kernel, q, k, v, g, initial_state):
    """The kernel (fla's chunk_simple_gla) with scale 1: (outputs, final state [B, H, K, V] fp32)."""
    if not torch.compiler.is_compiling():
        return kernel.fn(q=q, k=k, v=v, g=g, scale=1.0, initial_state=initial_state, output_final_state=True)
    return simple_gla_op(kernel.key, q, k, v, g, initial_state)


@torch.library.custom_op("hypic_rag::mamba2_chunk_scan", mutates_args=())
def mamba2_chunk_scan_op(kernel: int, x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                         c: torch.Tensor, chunk: int, skip: torch.Tensor,
                         initial_states: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = _kernels[kernel](x, dt, a, b, c, chunk_size=chunk, D=skip, initial_states=initial_states,
                                  return_final_states=True)
    return out.float().contiguous(), final.float().contiguous()


@mamba2_chunk_scan_op.register_fake
def _(kernel, x, dt, a, b, c, chunk, skip, initial_states):
    runs, steps, heads, p = x.shape
    return x.new_empty(runs, steps, heads, p, dtype=torch.float32), \
        x.new_empty(runs, heads, p, b.shape[-1], dtype=torch.float32)


def mamba2_chunk_scan(kernel: Kernel, x, dt, a, b, c, chunk: int, skip, initial_states):
    """The kernel (the modeling module's plain-torch SSD chunk scan) with the D skip: (outputs, final
    state), fp32."""
    if not torch.compiler.is_compiling():
        out, final = kernel.fn(x, dt, a, b, c, chunk_size=chunk, D=skip, initial_states=initial_states,
                               return_final_states=True)
        return out.float(), final.float()
    return mamba2_chunk_scan_op(kernel.key, x, dt, a, b, c, chunk, skip, initial_states)
