"""Read the exact inputs a model's linear layers hand to their recurrence function.

During a precompute forward the modeling module's chunked recurrence function (for example
`torch_chunk_gated_delta_rule`, or fla's kernel where transformers swapped it in) is wrapped: the
wrapper records the bound arguments under the layer index of the mixer that is running, then calls
the original. The operator M and interior state E are then computed from these same tensors with
the same function, so M shares E's numerics.
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from hypic_rag.models.specs import LinearLayerSpec


@dataclass
class RecurrenceCall:
    """One call of a chunked recurrence: the function and its arguments by name."""

    fn: Callable[..., Any]
    arguments: dict[str, Any]


@contextmanager
def track_layers(specs: tuple[LinearLayerSpec, ...], mixers: dict[int, torch.nn.Module]) -> Iterator[list[int]]:
    """Inside the block, the returned list's last item is the index of the linear layer running now."""
    current: list[int] = []

    def enter(module, _args):
        current.append(module.layer_idx)

    def leave(_module, _args, _output):
        current.pop()  # returns None: a forward hook's return value would replace the output

    hooks = []
    try:
        for spec in specs:
            mixer = mixers[spec.layer_idx]
            hooks.append(mixer.register_forward_pre_hook(enter))
            hooks.append(mixer.register_forward_hook(leave))
        yield current
    finally:
        for handle in hooks:
            handle.remove()


@contextmanager
def capture_recurrences(
    model: torch.nn.Module, specs: tuple[LinearLayerSpec, ...], mixers: dict[int, torch.nn.Module]
) -> Iterator[dict[int, RecurrenceCall]]:
    """Record each linear layer's chunked-recurrence call during the forwards run inside the block.

    Only one forward should run inside the block (a later call of the same layer overwrites).
    """
    calls: dict[int, RecurrenceCall] = {}
    patched: list[tuple[Any, str, Any]] = []
    with track_layers(specs, mixers) as current:
        try:
            for spec in specs:
                if spec.chunk_fn is None:
                    continue
                module = sys.modules[spec.modeling_module]
                original = getattr(module, spec.chunk_fn)
                if getattr(original, "_hypic_wrapped", False):
                    continue
                signature = inspect.signature(original)

                def wrapper(*args, __original=original, __signature=signature, **kwargs):
                    bound = __signature.bind(*args, **kwargs)
                    if current:
                        calls[current[-1]] = RecurrenceCall(fn=__original, arguments=dict(bound.arguments))
                    return __original(*args, **kwargs)

                wrapper._hypic_wrapped = True  # type: ignore[attr-defined]
                setattr(module, spec.chunk_fn, wrapper)
                patched.append((module, spec.chunk_fn, original))
            yield calls
        finally:
            for module, name, original in reversed(patched):
                setattr(module, name, original)
