"""Every seam of a request in one layer-major forward (Gated DeltaNet and Mamba2 hybrids).

Recomputing the seams one segment at a time costs one forward, and one read of every weight, per
segment; on small batches that read is the whole cost. Yet seam i at layer l only needs, from the
earlier seams, their outputs at that same layer, so all seams can go through the stack together:
  - attention: the cache holds the prefix, segment 0 and every interior's K/V at their real
    positions before the pass; the seam tokens attend with a position-causal mask (key position <=
    query position), which is exactly what each seam saw when run alone;
  - linear layers (Gated DeltaNet: qwen3_5, qwen3_next; Mamba2: falcon_h1, bamba,
    granitemoehybrid): inside each layer the recurrence still walks the seams in order, from
    segment 0's end state, with S <- M S + E over each interior between them, and the causal conv
    restarts at each seam from the tail before it. Only these two calls are split; the projections,
    norms, gates and MLPs run once over all seam tokens.
The result equals the sequential seam recompute up to float reordering (tests compare the two).
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from hypic_rag.executor import cache_ops
from hypic_rag.models.specs import MixerFamily, ModelSpec
from hypic_rag.ops.capture import track_layers
from hypic_rag.ops.compose import compose_state, merge_conv_tail
from hypic_rag.types import SegmentEntry


@dataclass(frozen=True)
class _Recurrence:
    """How a family's chunked recurrence function takes a sequence and a state."""

    sequence_args: tuple[str, ...]  # split along dim 1 at the seams ("0": the first parameter, however named)
    initial_state: str
    final_state_flag: str


_RECURRENCES = {
    MixerFamily.GATED_DELTA: _Recurrence(("query", "key", "value", "g", "beta"), "initial_state", "output_final_state"),
    MixerFamily.MAMBA2: _Recurrence(("0", "dt", "B", "C"), "initial_states", "return_final_states"),
}
_SUPPORTED = {"qwen3_5_text": MixerFamily.GATED_DELTA, "qwen3_next": MixerFamily.GATED_DELTA,
              "falcon_h1": MixerFamily.MAMBA2, "bamba": MixerFamily.MAMBA2, "granitemoehybrid": MixerFamily.MAMBA2}
_CONV_FN = "causal_conv1d_fn"
_STEP_TOKENS = 16  # Gated DeltaNet seams up to this long use the step-by-step recurrence


def supports_batched_seams(model: torch.nn.Module, spec: ModelSpec) -> bool:
    text = model.config.get_text_config(decoder=True)
    family = _SUPPORTED.get(text.model_type)
    if family is None or not spec.linear:
        return False
    return all(l.family is family and l.chunk_fn for l in spec.linear)


def _key_positions(entries: list[SegmentEntry], prefix_length: int) -> tuple[list[int], list[int]]:
    """Positions of the keys in cache order before the pass, and of the seam tokens (queries)."""
    keys = list(range(prefix_length + entries[0].length))
    seams: list[int] = []
    offset = prefix_length + entries[0].length
    for entry in entries[1:]:
        seams += range(offset, offset + entry.seam_tokens)
        keys += range(offset + entry.seam_tokens, offset + entry.length)
        offset += entry.length
    return keys, seams


@contextmanager
def _split_at_seams(spec: ModelSpec, mixers, entries: list[SegmentEntry]):
    """Wrap the conv and recurrence functions so each seam starts from the state before it."""
    widths = [e.seam_tokens for e in entries[1:]]
    by_layer = [{l.layer_idx: l for l in e.linear} for e in entries]
    final_conv: dict[int, torch.Tensor] = {}
    first = spec.linear[0]  # every linear layer of a model lives in one modeling module
    module = sys.modules[first.modeling_module]
    chunk_fn, conv_fn = getattr(module, first.chunk_fn), getattr(module, _CONV_FN)
    # A seam is a few tokens: the token-by-token recurrence beats a 64-token chunk padded around it.
    step_fn = getattr(module, first.recurrent_fn) if first.recurrent_fn else chunk_fn

    def interior_before_next_seam(i: int) -> SegmentEntry | None:
        """Entry i (1 <= i < n - 1) is followed by another seam: its interior comes before that seam."""
        entry = entries[i]
        return entry if 0 < i < len(entries) - 1 and entry.interior_length > 0 else None

    def conv(x, weight, bias=None, activation=None, **kwargs):
        layer = current[-1]
        total = sum(widths)
        columns = x[..., x.shape[-1] - total:]
        prev = x[..., : x.shape[-1] - total]  # the conv state before the pass (the cache already moved on)
        width = prev.shape[-1]
        outs, start = [], 0
        for i, w in enumerate(widths, start=1):
            window = prev
            if w > 0:
                joined = torch.cat([prev.to(columns.dtype), columns[..., start : start + w]], dim=-1)
                outs.append(conv_fn(joined, weight, bias, activation=activation)[..., -w:])
                window = joined[..., -width:]
                start += w
            entry = interior_before_next_seam(i)
            prev = merge_conv_tail(window, by_layer[i][layer].conv_tail[None], entry.interior_length) if entry else window
        final_conv[layer] = window
        return torch.cat([x[..., : x.shape[-1] - total], *outs], dim=-1)

    form = _RECURRENCES[first.family]
    names = list(inspect.signature(chunk_fn).parameters)  # the torch function's, even when a kernel runs
    step_names = set(inspect.signature(step_fn).parameters)
    sequence_args = {names[0] if a == "0" else a for a in form.sequence_args}

    def seam_call(call_args: tuple, call_kwargs: dict, part: slice, state):
        """The original function on one seam's slice of the sequence, from `state`. Arguments keep the
        caller's positional/keyword form: a kernel swapped in by transformers names them differently."""
        w = part.stop - part.start
        args = [v[:, part] if names[i] in sequence_args else v for i, v in enumerate(call_args)]
        kwargs = {k: (v[:, part] if k in sequence_args else v) for k, v in call_kwargs.items()}
        settings = {form.initial_state: state, form.final_state_flag: True}
        if first.family is MixerFamily.MAMBA2:  # one chunk per seam instead of padding it to the model's 256
            at = names.index("chunk_size")
            model_chunk = int(call_kwargs.get("chunk_size", args[at] if len(args) > at else w))
            settings["chunk_size"] = min(model_chunk, max(16, 1 << (w - 1).bit_length()))  # kernels want 2^k >= 16
        for key, value in settings.items():
            if key in names[: len(args)]:
                args[names.index(key)] = value
            else:
                kwargs[key] = value
        if first.family is MixerFamily.GATED_DELTA and w <= _STEP_TOKENS:
            return step_fn(*args, **{k: v for k, v in kwargs.items() if k in step_names})
        return chunk_fn(*args, **kwargs)

    def recurrence(*call_args, **call_kwargs):
        layer = current[-1]
        position = names.index(form.initial_state)
        state = call_kwargs.get(form.initial_state, call_args[position] if len(call_args) > position else None)
        outs, start = [], 0
        for i, w in enumerate(widths, start=1):
            if w > 0:
                out, state = seam_call(call_args, call_kwargs, slice(start, start + w), state)
                outs.append(out)
                start += w
            if interior_before_next_seam(i):
                cached = by_layer[i][layer]
                state = compose_state(state, cached.interior_operator[None], cached.interior_state[None])
        return torch.cat(outs, dim=1), state

    with track_layers(spec.linear, mixers) as current:
        try:
            setattr(module, first.chunk_fn, recurrence)
            setattr(module, _CONV_FN, conv)
            yield final_conv
        finally:
            setattr(module, first.chunk_fn, chunk_fn)
            setattr(module, _CONV_FN, conv_fn)


@torch.no_grad()
def batched_seam_pass(model, spec: ModelSpec, cache: DynamicCache, entries: list[SegmentEntry], prefix_length: int,
                      mixers) -> int:
    """Run the seams of entries[1:] through the model in one forward. Before the call the cache holds
    the prefix, segment 0 (exact end states) and every interior's K/V; afterwards each linear layer
    holds the state right after the last seam. Returns the number of seam tokens."""
    device = next(model.parameters()).device
    keys, seams = _key_positions(entries, prefix_length)
    held = cache_ops.kv(cache, spec.attention[0].layer_idx)[0].shape[-2] if spec.attention else len(keys)
    if held != len(keys):
        raise RuntimeError(f"seam pass expected {len(keys)} cached keys, the cache holds {held}")
    ids = torch.tensor([[t for e in entries[1:] for t in e.token_ids[: e.seam_tokens]]], device=device)
    positions = torch.tensor([seams], device=device)
    key_pos = torch.tensor(keys + seams, device=device)
    visible = key_pos[None, :] <= positions[0][:, None]
    masks = {"full_attention": visible[None, None], "linear_attention": None}
    with _split_at_seams(spec, mixers, entries) as final_conv:
        model.model(input_ids=ids, past_key_values=cache, position_ids=positions, attention_mask=masks, use_cache=True)
    for layer, window in final_conv.items():
        cache_ops.set_conv_state(cache, layer, window)
    return len(seams)
