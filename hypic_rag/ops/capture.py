"""Read the exact inputs a model's linear layers hand to their recurrence function.

During a precompute forward the modeling module's chunked recurrence function (swapped through
models.function_swap, under its process-wide lock) (for example
`torch_chunk_gated_delta_rule`, or fla's kernel where transformers swapped it in) is wrapped: the
wrapper records the bound arguments under the layer index of the mixer that is running, then calls
the original. The operator M and interior state E are then computed from these same tensors with
the same function, so M shares E's numerics.
"""

from __future__ import annotations

import inspect
import sys
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from hypic_rag.models.function_swap import SWAP_LOCK, own_call, swapped_functions
from hypic_rag.models.specs import LinearLayerSpec


@dataclass
class RecurrenceCall:
    """One call of a chunked recurrence: the function and its arguments by name."""

    fn: Callable[..., Any]
    arguments: dict[str, Any]


class LayerTrack(list):
    """The stack of tracked linear layers running now (last item innermost), in the thread `thread`."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()


@contextmanager
def track_layers(specs: tuple[LinearLayerSpec, ...], mixers: dict[int, torch.nn.Module]) -> Iterator[LayerTrack]:
    """Inside the block, the returned list's last item is the index of the linear layer running now."""
    current = LayerTrack()

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
    swaps = dict.fromkeys((spec.modeling_module, spec.chunk_fn) for spec in specs if spec.chunk_fn is not None)
    # the lock before the first read: another thread's swap must not be taken for the original
    with SWAP_LOCK, track_layers(specs, mixers) as current, ExitStack() as stack:
        for module_name, fn_name in swaps:
            module = sys.modules[module_name]
            original = getattr(module, fn_name)
            if getattr(original, "_hypic_wrapped", False):
                continue
            signature = inspect.signature(original)

            def wrapper(*args, __original=original, __signature=signature, **kwargs):
                if own_call(current):
                    arguments = dict(__signature.bind(*args, **kwargs).arguments)
                    calls[current[-1]] = RecurrenceCall(fn=__original, arguments=arguments)
                return __original(*args, **kwargs)

            wrapper._hypic_wrapped = True  # type: ignore[attr-defined]
            stack.enter_context(swapped_functions(module, {fn_name: wrapper}))
        yield calls
