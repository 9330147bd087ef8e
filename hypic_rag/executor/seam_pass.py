"""Every seam of a request in one layer-major forward (Gated DeltaNet / KDA, Mamba2 and short-conv hybrids).

Recomputing the seams one segment at a time costs one forward, and one read of every weight, per
segment; on small batches that read is the whole cost. Yet seam i at layer l only needs, from the
earlier seams, their outputs at that same layer, so all seams can go through the stack together:
  - segment 0 is not special: the request is passed as [prefix anchor, segment 0, ...]
    (executor/prefix_anchor.py), an entry of no tokens holding the prefix's state, so every
    segment's seam is recomputed from the state before it;
  - attention: the cache holds the prefix, segment 0 and every interior's K/V at their real
    positions before the pass; the seam tokens attend with a position-causal mask (key position <=
    query position), which is exactly what each seam saw when run alone;
  - linear layers (Gated DeltaNet / KDA: qwen3_5, qwen3_next, olmo_hybrid, kimi_linear, bailing_hybrid;
    Mamba2: falcon_h1, bamba, granitemoehybrid, nemotron_h, zamba2; lightning: minimax; short conv only:
    lfm2): inside each layer the recurrence still walks the seams in order, from
    entries[0]'s end state (the prefix anchor's), with S <- M S + E over each interior between them, and the causal conv
    restarts at each seam from the tail before it. Only these two calls are split; the projections,
    norms, gates and MLPs run once over all seam tokens.
  - the question rides in the same forward, as one more seam after the last interior, so a request
    is one forward whatever the number of segments (on a GPU each forward costs its launches).
Calls are batched where the chain allows it. Gated DeltaNet seams of equal width go through the
recurrence as one batch from the augmented start [0 | I] (as precompute builds [E | M]): each seam's
zero-start output o0_t, its own E and M, and r_t = P_t^T q_t come back together; the start states then
follow along the chain by S <- M S + E, and o_t = o0_t + S_start^T r_t (the recurrence is linear in
its start state). Their convs are one batched call whenever each interior between them is at least
the kernel width, since each window then starts from a cached tail rather than from the seam before.
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
from hypic_rag.models.families import ADAPTERS, adapter_for
from hypic_rag.models.function_swap import SWAP_LOCK, own_call, swapped_functions
from hypic_rag.models.specs import ModelSpec
from hypic_rag.ops.capture import track_layers
from hypic_rag.ops.compose import compose_state, merge_conv_tail
from hypic_rag.types import SegmentEntry


@dataclass(frozen=True)
class SeamPassResult:
    seam_tokens: int  # segment tokens recomputed (the question's not counted)
    logits: torch.Tensor | None  # [vocab] after the question, when it rode in the pass


def supports_batched_seams(model: torch.nn.Module, spec: ModelSpec) -> bool:
    """Every supported model type's mixers make one conv call and at most one recurrence call per
    layer on a multi-token forward (transformers 5.23); the pass needs one family throughout, and
    the recurrence function where the family has one."""
    if not spec.linear:
        return False
    family = spec.linear[0].family
    adapter = ADAPTERS.get(family)
    return adapter is not None and all(
        l.family is family and (adapter.recurrence is None or l.chunk_fn) for l in spec.linear
    )


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


def _runs(widths: list[int]) -> list[tuple[int, int]]:
    """[start, stop) index ranges of consecutive seams with the same nonzero width."""
    runs, i = [], 0
    while i < len(widths):
        j = i + 1
        while widths[i] > 0 and j < len(widths) and widths[j] == widths[i]:
            j += 1
        runs.append((i, j))
        i = j
    return runs


@contextmanager
def _split_at_seams(spec: ModelSpec, mixers, entries: list[SegmentEntry], question_tokens: int = 0,
                    restarts: frozenset[int] = frozenset()):
    """Wrap the conv and recurrence functions so each seam starts from the state before it. With
    question_tokens, the question is one more seam after the last segment's interior. The swap lock
    is taken before the originals are read, so another thread's swap is never taken for one.
    restarts: indices into entries of seams that start from a zero state and conv window and leave
    the chain as it was (hypic_adaptive's spans, executor/span_pass.py)."""
    with SWAP_LOCK, _split_at_seams_locked(spec, mixers, entries, question_tokens, restarts) as final_conv:
        yield final_conv


@contextmanager
def _split_at_seams_locked(spec: ModelSpec, mixers, entries: list[SegmentEntry], question_tokens: int = 0,
                           restarts: frozenset[int] = frozenset()):
    widths = [e.seam_tokens for e in entries[1:]] + ([question_tokens] if question_tokens else [])
    restart = [k + 1 in restarts for k in range(len(widths))]  # seam k belongs to entries[k + 1]
    offsets = [sum(widths[:k]) for k in range(len(widths))]  # where seam k starts among the pass's tokens
    runs = _runs(widths)
    by_layer = [{l.layer_idx: l for l in e.linear} for e in entries]
    final_conv: dict[int, torch.Tensor] = {}
    first = spec.linear[0]  # every linear layer of a model lives in one modeling module
    adapter = adapter_for(first)
    module = sys.modules[first.modeling_module]
    conv_fn = getattr(module, adapter.conv_fn) if adapter.conv_fn else None  # None: no conv (lightning)
    chunk_fn = getattr(module, first.chunk_fn) if first.chunk_fn else None  # None: conv-only layers (LFM2)
    step_fn = getattr(module, first.recurrent_fn) if first.recurrent_fn else chunk_fn

    def interior_after(k: int) -> SegmentEntry | None:
        """The interior between seam k (0-based in widths) and the next seam, if there is one."""
        entry = entries[k + 1] if k + 1 < len(widths) else None
        return entry if entry is not None and entry.interior_length > 0 else None

    def next_window(window, k: int, layer: int):
        """The conv window the seam after seam k starts from: the interior's cached tail, with fresh seam
        columns where the interior is shorter than the kernel."""
        entry = interior_after(k)
        return merge_conv_tail(window, by_layer[k + 1][layer].conv_tail[None], entry.interior_length) if entry else window

    def conv(x, weight, bias=None, activation=None, **kwargs):
        layer = current[-1]
        total = sum(widths)
        columns = x[..., x.shape[-1] - total:]
        prev = x[..., : x.shape[-1] - total]  # the conv state before the pass (the cache already moved on)
        width = prev.shape[-1]
        outs = []
        for lo, hi in runs:
            w = widths[lo]
            independent = all((interior_after(k).interior_length if interior_after(k) else 0) >= width
                              for k in range(lo, hi - 1))
            if w > 0 and hi - lo > 1 and independent:  # each window starts from a cached tail: one batched call
                tails = [prev.to(columns.dtype)] + [by_layer[k + 1][layer].conv_tail[None].to(columns.dtype)
                                                    for k in range(lo, hi - 1)]
                joined = torch.cat([torch.cat([t, columns[..., offsets[k]: offsets[k] + w]], dim=-1)
                                    for t, k in zip(tails, range(lo, hi))], dim=0)
                out = conv_fn(joined, weight, bias, activation=activation)[..., -w:]
                outs.append(out.transpose(0, 1).reshape(1, out.shape[1], -1))
                window = joined[-1:, :, -width:]
            else:
                for k in range(lo, hi):
                    window = prev
                    if widths[k] > 0:
                        start = torch.zeros_like(prev) if restart[k] else prev
                        joined = torch.cat([start.to(columns.dtype), columns[..., offsets[k]: offsets[k] + widths[k]]], -1)
                        outs.append(conv_fn(joined, weight, bias, activation=activation)[..., -widths[k]:])
                        window = prev if restart[k] else joined[..., -width:]
                    if k < hi - 1:
                        prev = next_window(window, k, layer)
            prev = next_window(window, hi - 1, layer)
        final_conv[layer] = window
        return torch.cat([x[..., : x.shape[-1] - total], *outs], dim=-1)

    form = adapter.recurrence
    if form is not None:
        names = list(inspect.signature(chunk_fn).parameters)  # the torch function's, even when a kernel runs
        step_names = set(inspect.signature(step_fn).parameters)
        sequence_args = {names[0] if a == "0" else a for a in form.sequence_args}

    def cross_interior(state, k: int, layer: int):
        """S <- M S + E over the interior after seam k, if there is one."""
        if interior_after(k) is None:
            return state
        cached = by_layer[k + 1][layer]
        return compose_state(state, cached.interior_operator[None], cached.interior_state[None])

    def argument(call_args: tuple, call_kwargs: dict, name: str):
        at = names.index(name)
        return call_kwargs[name] if name in call_kwargs else call_args[at]

    def seam_call(call_args: tuple, call_kwargs: dict, take, w: int, state):
        """The original function on `take(name, sequence)` of each sequence argument, from `state`.
        Arguments keep the caller's positional/keyword form: a kernel swapped in by transformers names
        them differently."""
        args = [take(names[i], v) if names[i] in sequence_args else v for i, v in enumerate(call_args)]
        kwargs = {k: (take(k, v) if k in sequence_args else v) for k, v in call_kwargs.items()}
        settings = {form.initial_state: state, form.final_state_flag: True,
                    **adapter.seam_settings(names, call_args, call_kwargs, w)}
        for key, value in settings.items():
            if key in names[: len(args)]:
                args[names.index(key)] = value
            else:
                kwargs[key] = value
        if w <= adapter.step_seams_up_to:
            return step_fn(*args, **{k: v for k, v in kwargs.items() if k in step_names})
        return chunk_fn(*args, **kwargs)

    def gated_delta_run(call_args, call_kwargs, lo: int, hi: int, state, layer: int):
        """Seams lo..hi-1 (same width) in one batched call from the augmented start [0 | I], which
        returns each seam's zero-start output, E and M; the true start states then follow by S <- M S + E
        and each output gains its start state's contribution (the recurrence is linear in the state)."""
        w, m = widths[lo], hi - lo
        d_k = argument(call_args, call_kwargs, "key").shape[-1]
        value = argument(call_args, call_kwargs, "value")
        h_v, d_v = value.shape[-2:]

        def take(name, v):
            x = torch.cat([v[:, offsets[k]: offsets[k] + w] for k in range(lo, hi)], dim=0)
            return torch.cat([x, x.new_zeros(*x.shape[:-1], d_k)], dim=-1) if name == "value" else x

        init = torch.zeros(m, h_v, d_k, d_v + d_k, dtype=torch.float32, device=value.device)
        init[..., d_v:] = torch.eye(d_k, dtype=torch.float32, device=value.device)
        out, final = seam_call(call_args, call_kwargs, take, w, init)
        final = final.float()
        starts = []
        for j, k in enumerate(range(lo, hi)):
            starts.append(torch.zeros_like(state) if restart[k] else state)
            if not restart[k]:
                state = compose_state(state, final[j: j + 1, ..., d_v:], final[j: j + 1, ..., :d_v])
            if k < hi - 1:
                state = cross_interior(state, k, layer)
        correction = torch.einsum("mwhk,mhkv->mwhv", out[..., d_v:].float(), torch.cat(starts, dim=0))
        return (out[..., :d_v].float() + correction).to(out.dtype).reshape(1, m * w, h_v, d_v), state

    def recurrence(*call_args, **call_kwargs):
        layer = current[-1]
        position = names.index(form.initial_state)
        state = call_kwargs.get(form.initial_state, call_args[position] if len(call_args) > position else None)
        outs = []
        for lo, hi in runs:
            if adapter.batched_runs and hi - lo > 1 and state is not None:
                out, state = gated_delta_run(call_args, call_kwargs, lo, hi, state, layer)
                outs.append(out)
            else:
                for k in range(lo, hi):
                    if widths[k] > 0:
                        part = slice(offsets[k], offsets[k] + widths[k])
                        start = torch.zeros_like(state) if restart[k] and state is not None else state
                        out, end = seam_call(call_args, call_kwargs, lambda _, v: v[:, part], widths[k], start)
                        outs.append(out)
                        state = state if restart[k] else end
                    if k < hi - 1:
                        state = cross_interior(state, k, layer)
            state = cross_interior(state, hi - 1, layer)
        return torch.cat(outs, dim=1), state

    def passing(own, original):
        """`own` for this pass's layers; any other model's call goes to the original unchanged."""
        return lambda *args, **kwargs: own(*args, **kwargs) if own_call(current) else original(*args, **kwargs)

    replacements = {adapter.conv_fn: passing(conv, conv_fn)} if conv_fn is not None else {}
    if chunk_fn is not None:
        replacements[first.chunk_fn] = passing(recurrence, chunk_fn)
    with track_layers(spec.linear, mixers) as current, swapped_functions(module, replacements):
        yield final_conv


def layer_masks(model, visible: torch.Tensor) -> dict:
    """transformers' per-layer-type masks for a forward whose full-attention layers take `visible`
    [queries, keys] (bool); linear and conv layers take no mask."""
    layer_types = set(getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ())
    masks = {t: None for t in layer_types | {"linear_attention"}}
    masks["full_attention"] = visible[None, None]
    return masks


@torch.no_grad()
def batched_seam_pass(model, spec: ModelSpec, cache: DynamicCache, entries: list[SegmentEntry], prefix_length: int,
                      mixers, question: list[int] | None = None) -> SeamPassResult:
    """Run the seams of entries[1:] through the model in one forward (entries[0]: the prefix anchor,
    or any segment whose state the cache holds). Before the call the cache holds the prefix, entries[0]
    and every interior's K/V; afterwards each linear layer
    holds the state right after the last seam. With a question, its tokens ride in the same forward
    after the last segment's interior, and the result carries the next-token logits after it."""
    device = next(model.parameters()).device
    keys, seams = _key_positions(entries, prefix_length)
    cached = cache_ops.kv(cache, spec.attention[0].layer_idx)[0] if spec.attention else None
    held = len(keys) if not spec.attention else (0 if cached is None else cached.shape[-2])
    if held != len(keys):
        raise RuntimeError(f"seam pass expected {len(keys)} cached keys, the cache holds {held}")
    tokens = [t for e in entries[1:] for t in e.token_ids[: e.seam_tokens]]
    queries = list(seams)
    if question:
        end = prefix_length + sum(e.length for e in entries)
        tokens += list(question)
        queries += range(end, end + len(question))
    ids = torch.tensor([tokens], device=device)
    positions = torch.tensor([queries], device=device)
    key_pos = torch.tensor(keys + queries, device=device)
    visible = key_pos[None, :] <= positions[0][:, None]
    masks = layer_masks(model, visible)
    with _split_at_seams(spec, mixers, entries, len(question or ())) as final_conv:
        if question:
            out = model(input_ids=ids, past_key_values=cache, position_ids=positions, attention_mask=masks,
                        use_cache=True, logits_to_keep=1)
            logits = out.logits[0, -1]
        else:
            model.model(input_ids=ids, past_key_values=cache, position_ids=positions, attention_mask=masks,
                        use_cache=True)
            logits = None
    for layer, window in final_conv.items():
        cache_ops.set_conv_state(cache, layer, window)
    return SeamPassResult(seam_tokens=len(seams), logits=logits)
