"""Who computes a request's cache misses: the executor's own device in batches, or Ray workers.

A miss prefill is a callable bound when the executor is built: it takes the missing segments
(validated token-id tuples, no duplicates) and returns their entries in the same order, which the
executor checks, stores and composes. The default is batched_precompute on the executor's own model.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Protocol

import torch

from hypic_rag.executor.precompute import precompute_segments
from hypic_rag.types import SegmentEntry

if TYPE_CHECKING:
    from hypic_rag.engine import HypicExecutor


class MissPrefill(Protocol):
    def __call__(self, segments: list[tuple[int, ...]]) -> list[SegmentEntry]: ...


def length_batches(segments: list[tuple[int, ...]], max_batch: int) -> list[list[int]]:
    """Indices of `segments` grouped by length, at most `max_batch` per group, longest groups first."""
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(segments):
        by_length.setdefault(len(ids), []).append(i)
    groups = []
    for members in sorted(by_length.values(), key=len, reverse=True):
        groups += [members[j : j + max_batch] for j in range(0, len(members), max_batch)]
    return groups


def token_batches(segments: list[tuple[int, ...]], max_tokens: int) -> list[list[int]]:
    """Consecutive indices of `segments` grouped into runs of at most `max_tokens` tokens (a longer
    segment is a group of its own)."""
    groups: list[list[int]] = []
    used = 0
    for i, ids in enumerate(segments):
        if not groups or used + len(ids) > max_tokens:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += len(ids)
    return groups


def batched_precompute(executor: "HypicExecutor", segments: list[tuple[int, ...]],
                       max_batch: int | None = None) -> list[SegmentEntry]:
    """Entries of `segments` computed on the executor's device: on the lean runtime every length in
    one forward (config.miss_batch_tokens at a time), on transformers' equal lengths in one forward."""
    dtype = getattr(torch, executor.config.interior_dtype)
    if getattr(executor, "lean", None) is not None:
        seam, fingerprint = executor.config.precompute_seam, executor.fingerprint.to_string()
        return [with_interior_dtype(entry, dtype) for group in token_batches(segments, executor.config.miss_batch_tokens)
                for entry in executor.lean.precompute([segments[i] for i in group], seam, fingerprint)]
    max_batch = max_batch or executor.config.miss_batch_size
    out: list[SegmentEntry | None] = [None] * len(segments)
    for group in length_batches(segments, max_batch):
        entries = precompute_segments(
            executor.model, executor.spec, executor.mixers, executor.rotary_emb, [segments[i] for i in group],
            executor.prefix_cache, len(executor.shared_prefix), executor.config.precompute_seam,
            executor.fingerprint.to_string(),
        )
        for i, entry in zip(group, entries):
            out[i] = with_interior_dtype(entry, dtype)
    return out  # type: ignore[return-value]


def with_interior_dtype(entry: SegmentEntry, dtype: torch.dtype) -> SegmentEntry:
    """`entry` with its interior state E and operator M in `dtype` (ExecutorConfig.interior_dtype)."""
    if all(l.interior_state is None or l.interior_state.dtype == dtype for l in entry.linear):
        return entry
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return dataclasses.replace(entry, linear=tuple(
        dataclasses.replace(l, interior_state=cast(l.interior_state), interior_operator=cast(l.interior_operator))
        for l in entry.linear))
